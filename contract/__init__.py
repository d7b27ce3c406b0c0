"""The message contract shared by the gateway, the inference workers and outside publishers.

Imports only pydantic and Pillow, so either side (and a service that only talks to the queue)
can depend on it without the other side's libraries.
"""
