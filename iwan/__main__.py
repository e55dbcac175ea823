from iwan.cli import main

main()
