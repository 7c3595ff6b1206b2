"""Several workers on one search: the team, the followers and the directives they obey."""
