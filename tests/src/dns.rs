//! A tiny authoritative DNS server for tests, on UDP: answers A queries from a table the test
//! sets (with a chosen TTL), NXDOMAIN for names not in it, an empty answer for other types, and
//! counts the queries per name so a test can wait for the next resolution instead of sleeping.

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Zone {
    /// name (lower case, no trailing dot) → (addresses, TTL seconds)
    records: HashMap<String, (Vec<Ipv4Addr>, u32)>,
    queries: HashMap<String, u64>,
    /// Names answered SERVFAIL.
    failing: std::collections::HashSet<String>,
}

/// See the module docs. Stops when dropped.
pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    asked: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl DnsServer {
    /// Listen on `127.0.0.1` at a port the OS picks.
    pub async fn start() -> DnsServer {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone::default()));
        let asked = Arc::new(tokio::sync::Notify::new());
        let (z, n) = (zone.clone(), asked.clone());
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..len]) else {
                    continue;
                };
                let reply = answer(&query, &z);
                n.notify_waiters();
                if let Ok(bytes) = reply.to_vec() {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        });
        DnsServer {
            addr,
            zone,
            asked,
            task,
        }
    }

    /// Answer A queries for `name` with `addrs`, TTL `ttl` seconds.
    pub fn set(&self, name: &str, addrs: &[Ipv4Addr], ttl: u32) {
        self.zone
            .lock()
            .unwrap()
            .records
            .insert(key(name), (addrs.to_vec(), ttl));
        self.zone.lock().unwrap().failing.remove(&key(name));
    }

    /// Answer SERVFAIL for `name` (a broken upstream resolver) until [`DnsServer::set`] again.
    pub fn fail(&self, name: &str) {
        self.zone.lock().unwrap().failing.insert(key(name));
    }

    /// How many queries (any type) for `name` arrived so far.
    pub fn queries(&self, name: &str) -> u64 {
        *self
            .zone
            .lock()
            .unwrap()
            .queries
            .get(&key(name))
            .unwrap_or(&0)
    }

    /// Wait until at least `n` queries for `name` arrived; false after `timeout`.
    pub async fn wait_queries(&self, name: &str, n: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let asked = self.asked.notified();
            if self.queries(name) >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, asked).await.is_err() {
                return self.queries(name) >= n;
            }
        }
    }
}

fn answer(query: &Message, zone: &Mutex<Zone>) -> Message {
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_authoritative(true)
        .set_recursion_desired(query.recursion_desired());
    let mut zone = zone.lock().unwrap();
    for q in query.queries() {
        reply.add_query(q.clone());
        let name = key(&q.name().to_utf8());
        *zone.queries.entry(name.clone()).or_default() += 1;
        if zone.failing.contains(&name) {
            reply.set_response_code(ResponseCode::ServFail);
            continue;
        }
        match zone.records.get(&name) {
            None => {
                reply.set_response_code(ResponseCode::NXDomain);
            }
            Some((addrs, ttl)) if q.query_type() == RecordType::A => {
                for ip in addrs {
                    reply.add_answer(Record::from_rdata(q.name().clone(), *ttl, RData::A(A(*ip))));
                }
            }
            Some(_) => {}
        }
    }
    reply
}
