"""Pure SIP accounting: which requests make records, and the pseudo-variables that fill them.

ACC_COLUMNS is the one list of acc's fixed columns (what logic.AccHandler writes and what
flatstore.reader names when it reads acc files back)."""

# acc's fixed columns, in the order acc writes them (acc_db_request and tm-flag accounting).
ACC_COLUMNS = ("method", "from_tag", "to_tag", "callid", "sip_code", "sip_reason", "time")
