"""Pure numpy transforms: no I/O, no framework. Each works on one block of a tensor."""
