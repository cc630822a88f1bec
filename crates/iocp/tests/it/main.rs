//! The integration suite: every test here runs on epoll and on io_uring (`backend_test!`).

mod assoc;
mod cancel;
mod faults;
mod file;
mod hook;
mod net;
mod pool;
mod port;
mod readiness;
mod regress;
mod rings;
mod stress;
mod transmit;
mod udp;
