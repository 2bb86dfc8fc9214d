from stream_worker.cli import main

main()
