from blipq.cli import app

app(prog_name="blipq")
