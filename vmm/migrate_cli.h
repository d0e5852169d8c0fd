/*
 * `ferry-vmm migrate`: runs a live migration from the command line, without ferryd, through
 * the source ferry-vmm's control socket (docs/control-api.md, "Migration" and "The ferry-vmm
 * migrate command"): migrate-set-parameters with the options given, migrate-send, then
 * progress from the `migration` notifications and a query-migrate every 250 ms until the
 * migration ends; after `completed`, `quit` to the source unless --keep-source.  SIGINT and
 * SIGTERM send migrate-cancel and wait for the final status.
 */
#pragma once

#include <glib.h>
#include <json-glib/json-glib.h>

/*
 * Runs the command.  @argv[0] is the subcommand's name ("migrate"), the options and the URI
 * follow (main() passes its own argc - 1 and argv + 1).  Progress and errors go to stderr,
 * the summary to stdout.  Returns the process's exit status: 0 the migration completed (and
 * the source was told to quit unless --keep-source), 1 it failed, was cancelled or the
 * control socket failed, 2 bad arguments.  Runs its own GMainContext (pushed as the thread's
 * default while it runs) and SIGINT/SIGTERM sources on it.
 */
int ferry_migrate_cli_main(int argc, char **argv);

/*
 * One progress line for @status, a query-migrate result or `migration` notification object
 * (docs/control-api.md, "query-migrate"): with @bar, "[###...]  63%  612/968 MiB  412 MiB/s
 * round 2  dirty 1.2 Mpages/s  throttle 0%" (the status follows when not "active"), without
 * it the status comes first and there is no bar.  The percentage is ram.transferred /
 * ram.total in round 0 (iteration 0) and (ram.total - ram.remaining) / ram.total after, clamped
 * to 0..100.  Missing members count as 0.  Returns a newly allocated string without newline.
 */
char *ferry_migrate_progress_line(JsonObject *status, gboolean bar);
