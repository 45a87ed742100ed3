"""The operator's command line tools: a client of the admin API and its status view."""
