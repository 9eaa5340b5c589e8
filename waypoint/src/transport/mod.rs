//! Transport: the HBONE server (mTLS + HTTP/2 CONNECT terminated), the HBONE client and its
//! tunnel pool (re-originated CONNECTs, h2c multiplexing), and the listening sockets.

pub mod hbone;
pub mod header_deadline;
pub mod listen;
pub mod workers;
