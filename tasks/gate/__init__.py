"""gate: a release passes only when its eval metrics reach the floors pinned in params and
do not regress against a baseline release."""
