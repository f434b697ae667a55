"""timeline: every domain's events of an order joined into one view and one timeline, with
escalations and root-cause tags from rules that are data, and the support API and console."""
