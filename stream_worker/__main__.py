from stream_worker.cli.app import main

main()
