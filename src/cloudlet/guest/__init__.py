"""Working with what a guest hands back: copy rules every driver shares, and the landing
that writes guest files on the host safely. The bytes move through the Driver."""
