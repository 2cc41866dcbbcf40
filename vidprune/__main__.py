from vidprune.cli import main

main()
