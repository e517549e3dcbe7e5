"""Timeline: duplicate and timing analysis (pure), its words, live SQL over send_log, legacy logs."""
