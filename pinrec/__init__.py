"""PinRec's top floor: the `pinrec` command line, the demo and the rehearsal runner.

What every layer shares (contracts, the lake layout and adapter, user errors) is the ground
floor, `pinrec.core`; see docs/adr/0009-ground-floor.md."""
