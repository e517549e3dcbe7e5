"""Web: one blueprint module per page area; shared forms, page size and upload paths in common."""
