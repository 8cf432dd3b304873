//! The `flowgate` command line: exact output forms and exit statuses other tools rely on.
