"""Several processes on one machine: a supervisor and its workers (the README's "Running
several instances")."""
