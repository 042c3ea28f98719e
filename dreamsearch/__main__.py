from dreamsearch.cli import main

main()
