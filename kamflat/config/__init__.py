"""Pure config handling: the preprocessor, the cfg reader, regex rules, the module-param table."""
