from gepa_trace.cli import main

main()
