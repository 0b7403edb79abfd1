//! Load balancing on haproxy: listeners of the desired state -> [`render`] (the whole
//! haproxy.cfg, pure) -> checked with `haproxy -c` -> swapped in atomically -> a reload through
//! the master (listening sockets handed over) or, for weight-only changes, the runtime socket.

pub mod render;
