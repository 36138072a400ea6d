//! sluice's own HTTP/1.1 client side against backends that answer with
//! scripted bytes: every way a response body can be delimited, interim
//! answers, connections the backend closes while they sit in the pool, and
//! bytes a backend sends beyond its answer.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the scripted backend does with one request.
#[derive(Clone)]
enum Answer {
    /// Write these bytes (maybe in pieces, with a pause between), then keep
    /// the connection open for the next request.
    Send(Vec<&'static [u8]>),
    /// Write these bytes, then close.
    SendAndClose(&'static [u8]),
    /// Close without answering.
    Close,
}

/// A backend that answers the n-th request it reads (over all its
/// connections) with `answers[n]`, and records each request as
/// (connection number, raw text).
struct Scripted {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<(usize, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    async fn start(answers: Vec<Answer>) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(Mutex::new(answers.into_iter()));
        let (seen2, answers2) = (seen.clone(), answers.clone());
        let task = tokio::spawn(async move {
            let mut conns = 0;
            while let Ok((s, _)) = listener.accept().await {
                conns += 1;
                let (seen, answers) = (seen2.clone(), answers2.clone());
                tokio::spawn(serve_scripted(s, conns, seen, answers));
            }
        });
        Scripted { addr, seen, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<(usize, String)> {
        self.seen.lock().unwrap().clone()
    }

    /// The connection each request came on, in order.
    fn conns(&self) -> Vec<usize> {
        self.seen().iter().map(|(c, _)| *c).collect()
    }
}

async fn serve_scripted(
    mut s: TcpStream,
    conn: usize,
    seen: Arc<Mutex<Vec<(usize, String)>>>,
    answers: Arc<Mutex<std::vec::IntoIter<Answer>>>,
) {
    let mut got = Vec::new();
    loop {
        let Some(request) = read_request(&mut s, &mut got).await else {
            return;
        };
        seen.lock().unwrap().push((conn, request));
        let next = answers.lock().unwrap().next();
        match next {
            Some(Answer::Send(pieces)) => {
                for (i, piece) in pieces.iter().enumerate() {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    if s.write_all(piece).await.is_err() {
                        return;
                    }
                }
            }
            Some(Answer::SendAndClose(bytes)) => {
                let _ = s.write_all(bytes).await;
                return;
            }
            Some(Answer::Close) | None => return,
        }
    }
}

/// Reads one request (head, and a body by length or chunked) off `s`.
async fn read_request(s: &mut TcpStream, got: &mut Vec<u8>) -> Option<String> {
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_ascii_lowercase();
            let length = head.lines().find_map(|l| {
                l.strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap())
            });
            let total = if head.contains("transfer-encoding: chunked") {
                text[end + 4..].find("0\r\n\r\n").map(|i| end + 4 + i + 5)
            } else {
                Some(end + 4 + length.unwrap_or(0))
            };
            if let Some(total) = total.filter(|&t| got.len() >= t) {
                let request = String::from_utf8_lossy(&got[..total]).into_owned();
                got.drain(..total);
                return Some(request);
            }
        }
        let n = s.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
    }
}

fn proxy_to(backend: &Scripted) -> String {
    route_yaml("", &[("b", backend.url(), 1)])
}

/// Sends `request` on `s` and reads the answer to its end: by length, by
/// chunks, or (no framing) to the close.
async fn exchange(s: &mut TcpStream, request: &str) -> String {
    s.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_ascii_lowercase();
            let done = if request.starts_with("HEAD") {
                true
            } else if head.contains("transfer-encoding: chunked") {
                text.ends_with("0\r\n\r\n")
            } else if let Some(len) = head.lines().find_map(|l| {
                l.strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap())
            }) {
                got.len() >= end + 4 + len
            } else {
                false
            };
            if done {
                return text;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        if n == 0 {
            return String::from_utf8_lossy(&got).into_owned();
        }
        got.extend_from_slice(&buf[..n]);
    }
}

/// The body of a response as the client decoded it.
fn body_of(response: &str) -> String {
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_string();
    }
    let mut out = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest
            .split_once("\r\n")
            .unwrap_or_else(|| panic!("a chunk size line in {response:?}"));
        let size = usize::from_str_radix(size, 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

const GET: &str = "GET /x HTTP/1.1\r\nhost: a\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_response_body_arrives_whole() {
    let b = Scripted::start(vec![
        // Chunked, in pieces that split a size line, with trailers.
        Answer::Send(vec![
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
            b"lo\r\n1",
            b"0\r\n, chunked body!!\r\n0\r\nx-t: 1\r\n\r\n",
        ]),
        // By length, the head and the body apart.
        Answer::Send(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n",
            b"by length",
        ]),
        // An interim answer first, then the real one.
        Answer::Send(vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
        ]),
        // A HEAD answer declares a length and sends no body.
        Answer::Send(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n"]),
        // No framing at all: the body runs to the close.
        Answer::SendAndClose(b"HTTP/1.1 200 OK\r\n\r\nuntil the close"),
    ])
    .await;
    let p = start_proxy(&proxy_to(&b)).await;
    let mut s = TcpStream::connect(p.proxy_addr()).await.unwrap();

    let r = exchange(&mut s, GET).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(body_of(&r), "hello, chunked body!!");
    let r = exchange(&mut s, GET).await;
    assert_eq!(body_of(&r), "by length");
    let r = exchange(&mut s, GET).await;
    assert!(r.starts_with("HTTP/1.1 201"), "{r}");
    assert_eq!(body_of(&r), "ok");
    let r = exchange(&mut s, "HEAD /x HTTP/1.1\r\nhost: a\r\n\r\n").await;
    assert!(r.to_ascii_lowercase().contains("content-length: 50"), "{r}");
    let r = exchange(&mut s, GET).await;
    assert_eq!(body_of(&r), "until the close");
    // All five rode one backend connection until the backend closed it.
    assert_eq!(b.conns(), [1, 1, 1, 1, 1]);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_beyond_an_answer_never_reach_the_next_request() {
    let b = Scripted::start(vec![
        Answer::Send(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nmineHTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nstolen",
        ]),
        Answer::Send(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfresh"]),
    ])
    .await;
    let p = start_proxy(&proxy_to(&b)).await;
    let mut s = TcpStream::connect(p.proxy_addr()).await.unwrap();
    assert_eq!(body_of(&exchange(&mut s, GET).await), "mine");
    assert_eq!(body_of(&exchange(&mut s, GET).await), "fresh");
    assert_eq!(
        b.conns(),
        [1, 2],
        "the connection that said too much is closed"
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_backend_dropped_is_not_an_error() {
    let ok: &'static [u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let b = Scripted::start(vec![
        // Closed while idle in the pool: seen before it is used.
        Answer::SendAndClose(ok),
        Answer::Send(vec![ok]),
        // Closed as the next request arrives (a backend's keep-alive
        // timeout racing the request): an idempotent request goes again...
        Answer::Close,
        Answer::Send(vec![ok]),
        // ...one that is not gets 502, as it may have been acted on.
        Answer::Close,
    ])
    .await;
    let p = start_proxy(&proxy_to(&b)).await;
    let mut s = TcpStream::connect(p.proxy_addr()).await.unwrap();
    const POST: &str = "POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n";
    assert_eq!(body_of(&exchange(&mut s, GET).await), "ok");
    // Let the backend's FIN reach sluice (a socket event, not a timer).
    // A POST is never sent again, so only the idle check can save it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(body_of(&exchange(&mut s, POST).await), "ok");
    assert_eq!(body_of(&exchange(&mut s, GET).await), "ok");
    let r = exchange(&mut s, POST).await;
    assert!(r.starts_with("HTTP/1.1 502"), "{r}");
    assert_eq!(b.conns(), [1, 2, 2, 3, 3]);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_answers_give_502() {
    let b = Scripted::start(vec![
        Answer::SendAndClose(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
        ),
        Answer::SendAndClose(b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n"),
        Answer::SendAndClose(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n"),
        // A coding the client would get unlabelled, and chunking in 1.0.
        Answer::SendAndClose(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nxx"),
        Answer::SendAndClose(b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"),
        // A bare LF where the chunked body should end.
        Answer::SendAndClose(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\n"),
    ])
    .await;
    let p = start_proxy(&proxy_to(&b)).await;
    for _ in 0..5 {
        let mut s = TcpStream::connect(p.proxy_addr()).await.unwrap();
        let r = exchange(&mut s, GET).await;
        assert!(r.starts_with("HTTP/1.1 502"), "{r}");
    }
    // A body cut short by the backend ends the client's response early
    // rather than passing for a whole one.
    let short = Scripted::start(vec![Answer::SendAndClose(
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",
    )])
    .await;
    let p2 = start_proxy(&proxy_to(&short)).await;
    let mut s = TcpStream::connect(p2.proxy_addr()).await.unwrap();
    let r = exchange(&mut s, GET).await;
    // hyper may not flush the head before it drops the connection; either
    // way the client never holds the ten bytes it was promised.
    let whole = r.contains("\r\n\r\n") && body_of(&r).len() >= 10;
    assert!(!whole, "{r}");
    let mut rest = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut rest))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "and the connection closes");
    p.shutdown().await;
    p2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_length_beside_chunking_never_reaches_the_client() {
    let b = Scripted::start(vec![
        Answer::Send(vec![
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ]),
        Answer::Send(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]),
    ])
    .await;
    let p = start_proxy(&proxy_to(&b)).await;
    let mut s = TcpStream::connect(p.proxy_addr()).await.unwrap();
    let r = exchange(&mut s, GET).await;
    assert!(!r.contains("content-length: 3"), "{r}");
    assert_eq!(body_of(&r), "hello");
    assert_eq!(body_of(&exchange(&mut s, GET).await), "ok");
    assert_eq!(
        b.conns(),
        [1, 2],
        "a backend that framed it both ways is not trusted again"
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_chunked_upload_arrives_whole() {
    // Large enough that writes to the backend wait for room along the way.
    let b = Backend::start("b").await;
    let p = start_proxy(&route_yaml("", &[("b", b.url(), 1)])).await;
    let mut s = TcpStream::connect(p.proxy_addr()).await.unwrap();
    let (mut recv, send) = s.split();
    let writer = async move {
        let mut send = send;
        send.write_all(b"POST /up HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        let chunk = vec![b'x'; 65_536];
        for _ in 0..64 {
            send.write_all(b"10000\r\n").await.unwrap();
            send.write_all(&chunk).await.unwrap();
            send.write_all(b"\r\n").await.unwrap();
        }
        send.write_all(b"0\r\n\r\n").await.unwrap();
    };
    let reader = async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("b 4194304") {
            let n = recv.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(writer, reader)
    })
    .await
    .expect("the whole upload is answered");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_go_by_length_or_chunked() {
    let ok: &'static [u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let b = Scripted::start(vec![Answer::Send(vec![ok]), Answer::Send(vec![ok])]).await;
    let p = start_proxy(&proxy_to(&b)).await;
    let mut s = TcpStream::connect(p.proxy_addr()).await.unwrap();
    exchange(
        &mut s,
        "POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello",
    )
    .await;
    exchange(
        &mut s,
        "POST /x HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    )
    .await;
    let seen = b.seen();
    assert!(seen[0].1.ends_with("\r\n\r\nhello"), "{}", seen[0].1);
    let chunked = seen[1].1.to_ascii_lowercase();
    assert!(chunked.contains("transfer-encoding: chunked"), "{chunked}");
    assert!(
        chunked.ends_with("\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"),
        "{chunked}"
    );
    p.shutdown().await;
}
