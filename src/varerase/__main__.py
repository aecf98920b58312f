from varerase.cli import main

main()
