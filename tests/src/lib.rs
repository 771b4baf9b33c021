//! The harness for multi-process tests: start real `plexd-target` and `plexd`
//! processes, reap them in a drop guard, wait on conditions with bounded deadlines.
