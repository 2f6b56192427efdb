"""Pure SIP accounting: which requests make records, and the pseudo-variables that fill them."""
