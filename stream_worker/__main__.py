from stream_worker.cli import app

app(prog_name="streamrec")
