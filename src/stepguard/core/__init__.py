"""The pure decision core: no clock, no I/O, no framework. Values in, a decision out."""
