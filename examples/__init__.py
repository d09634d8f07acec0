"""Services of one's own protected by tokenlife, as a team would write them (mypy and tests check them)."""
