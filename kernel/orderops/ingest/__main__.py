from orderops.ingest.app import main

main()
