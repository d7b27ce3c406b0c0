"""The gateway: the HTTP API. It validates input, stores jobs, hands them to a broker and answers.

It never imports torch, transformers or the inference side (a test keeps it so).
"""
