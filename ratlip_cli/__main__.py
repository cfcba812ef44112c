"""`python -m ratlip_cli` (used by torchrun) runs the CLI."""

from ratlip_cli.cli import main

if __name__ == "__main__":
    main()
