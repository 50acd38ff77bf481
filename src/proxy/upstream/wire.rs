//! HTTP/1.1 to Flagr spoken by the request's own task, over a client connection's own
//! connection: the request written in one go, the answer's head read and parsed here, its
//! body read from the socket only as the client's connection asks for more.
//!
//! In: a request whose body has a known length of at most `proxy.inline_body_max_bytes`, and
//! the connection the previous answer left behind (and, beside it, the timer its requests'
//! deadlines share: deadline.rs). Out: the request as bytes, with `Host` when it had none and
//! the forwarding headers (headers.rs), then Flagr's response, whose body hands the
//! connection back when it was read to its end and Flagr keeps it open.
//! Never: reuses a connection with an answer not read to its end, one Flagr said it closes or
//! one it wrote to unasked; accepts a head over 64 KiB or an answer whose framing is unclear.
//!
//! Why not hyper's client here: it drives each connection from a task of its own, so each
//! request crosses a channel to that task and the answer and its body two more back, with the
//! wake-ups between them: about a quarter of the proxy's CPU per request (BENCHMARKS.md).
//! hyper still serves the clients, and every request this does not take (streamed bodies, h2,
//! closing clients) goes through its pooled client. Parsing is httparse's, as in hyper.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use smallvec::SmallVec;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UnixStream};
use tokio::time::{Instant, Sleep};

use super::super::headers::{write_forwarded, X_FORWARDED_FOR, X_FORWARDED_PROTO};
use super::spare::Spares;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The largest response head (status line and headers) read before giving up.
const MAX_HEAD: usize = 64 * 1024;
/// Response headers at most (hyper's client allows as many).
const MAX_HEADERS: usize = 100;
/// Room made in the read buffer before each read.
const READ_AHEAD: usize = 16 * 1024;

/// A connection to Flagr and what was read from it but not yet used.
pub(super) struct Conn {
    stream: Stream,
    buf: BytesMut,
    /// When the last answer on it ended (set as it goes home).
    idle_since: Instant,
    /// Where it goes when its client connection closes (spare.rs); nowhere when gone.
    spares: Weak<Spares>,
}

/// TCP or the Unix socket Flagr listens on.
pub(super) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    /// Boxed once when made: the connection then moves between a client connection, a
    /// request's future and its answer's body as a pointer, not as its whole state.
    pub(super) fn new(stream: Stream, spares: Weak<Spares>) -> Box<Self> {
        Box::new(Self {
            stream,
            buf: BytesMut::new(),
            idle_since: Instant::now(),
            spares,
        })
    }

    /// True unless Flagr has closed it or it sat idle longer than `max_idle` (as the pool's
    /// connections, so Flagr's own idle limit does not close it under a request).
    pub(super) fn usable(&self, max_idle: Duration) -> bool {
        self.idle_within(max_idle) && !self.stale()
    }

    /// True while its last answer ended no longer than `max_idle` ago.
    pub(super) fn idle_within(&self, max_idle: Duration) -> bool {
        self.idle_since.elapsed() <= max_idle
    }

    pub(super) fn idle_since(&self) -> Instant {
        self.idle_since
    }

    /// Its read buffer freed while it waits for another client connection (the buffer is
    /// empty: an answer ends with nothing after it, or the connection is not kept).
    pub(super) fn shed_buffer(&mut self) {
        self.buf = BytesMut::new();
    }

    /// True when Flagr closed the connection while it sat idle (or wrote to it unasked).
    /// `try_read` makes no system call unless the event loop saw the socket readable.
    pub(super) fn stale(&self) -> bool {
        // "Would block" also covers readiness left over from a read that filled the buffer.
        let mut probe = [0u8; 1];
        let read = match &self.stream {
            Stream::Tcp(s) => s.try_read(&mut probe),
            Stream::Unix(s) => s.try_read(&mut probe),
        };
        says_closed(read)
    }

    /// Like [`Conn::stale`], but asking the socket itself (one `recv` with `MSG_PEEK`), for a
    /// connection that waited unwatched: the event loop may not have seen Flagr's close yet.
    pub(super) fn closed_now(&self) -> bool {
        let mut probe = [MaybeUninit::<u8>::uninit(); 1];
        let peeked = match &self.stream {
            Stream::Tcp(s) => socket2::SockRef::from(s).peek(&mut probe),
            Stream::Unix(s) => socket2::SockRef::from(s).peek(&mut probe),
        };
        says_closed(peeked)
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_AHEAD / 4 {
            self.buf.reserve(READ_AHEAD);
        }
        match &mut self.stream {
            Stream::Tcp(s) => tokio_util::io::poll_read_buf(Pin::new(s), cx, &mut self.buf),
            Stream::Unix(s) => tokio_util::io::poll_read_buf(Pin::new(s), cx, &mut self.buf),
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.stream {
            Stream::Tcp(s) => s.write_all(bytes).await,
            Stream::Unix(s) => s.write_all(bytes).await,
        }
    }
}

/// A client connection's own connection to Flagr, in what its HTTP/1 requests carry.
/// Such a client sends its next request only after the previous answer, so the connection is
/// free whenever a request comes: no pool to search, no task to hand it to. Its requests'
/// timer is kept beside it (deadline.rs).
#[derive(Clone, Default)]
pub struct OwnConnection(Arc<Mutex<Own>>);

#[derive(Default)]
struct Own {
    conn: Option<Box<Conn>>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Drop for Own {
    /// The client connection has gone: its connection to Flagr, if idle and sound, is kept
    /// for a new one.
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            if let Some(spares) = c.spares.upgrade() {
                spares.park(c);
            }
        }
    }
}

impl OwnConnection {
    fn lock(&self) -> std::sync::MutexGuard<'_, Own> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection left by the previous answer, if still [usable](Conn::usable).
    pub(super) fn take(&self, max_idle: Duration) -> Option<Box<Conn>> {
        let c = self.lock().conn.take()?;
        c.usable(max_idle).then_some(c)
    }

    fn put(&self, mut c: Box<Conn>) {
        c.idle_since = Instant::now();
        self.lock().conn = Some(c);
    }

    /// The timer the previous request left, or a new one set for `due`.
    pub(super) fn timer(&self, due: Instant) -> Pin<Box<Sleep>> {
        let kept = self.lock().timer.take();
        kept.unwrap_or_else(|| super::deadline::timer(due))
    }

    /// Kept for the next request (a request cut short drops its timer instead).
    pub(super) fn keep_timer(&self, timer: Pin<Box<Sleep>>) {
        self.lock().timer = Some(timer);
    }
}

/// True when the request can go this way: its whole body known in size and at most `max`.
pub(super) fn fits<B: Body>(method: &Method, body: &B, max: u64) -> bool {
    *method != Method::CONNECT && body.size_hint().exact().is_some_and(|n| n <= max)
}

/// The request's head as it goes on the wire (`path` in origin form), with room for `body`,
/// which [`add_body`] then appends, so one write sends both. `Host` is `authority` when the
/// request has none (HTTP/2 clients send `:authority`); `peer` goes into the forwarding
/// headers (headers.rs). Synchronous, so the request's parts are dropped before
/// its future waits for anything.
pub(super) fn encode_head<B: Body>(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    authority: &str,
    peer: &HeaderValue,
    body: &B,
) -> Vec<u8> {
    let len = body.size_hint().exact().unwrap_or(0);
    let size: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    let mut out = Vec::with_capacity(path.len() + size + 128 + len as usize);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let (mut host, mut proto, mut has_for) = (false, false, false);
    for (name, value) in headers {
        // The length written is the body's as sent; the whole body goes at once, so there is
        // nothing to wait for a 100 Continue for. (Hop-by-hop headers are gone already.)
        if name == header::CONTENT_LENGTH || name == header::EXPECT {
            continue;
        }
        if *name == X_FORWARDED_FOR {
            has_for = true;
            continue;
        }
        proto |= *name == X_FORWARDED_PROTO;
        host |= name == header::HOST;
        // HeaderValue holds no CR or LF, so nothing here can end a line early.
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !host {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(authority.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    write_forwarded(&mut out, headers, has_for, proto, peer);
    let sends_body = matches!(*method, Method::POST | Method::PUT | Method::PATCH);
    if len > 0 || sends_body {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Appends the whole of `body` to the head [`encode_head`] made of it; an error when it
/// ends at another length than it announced.
pub(super) async fn add_body<B>(out: &mut Vec<u8>, body: &mut B) -> Result<(), BoxError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let len = body.size_hint().exact().unwrap_or(0);
    let start = out.len();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map_err(Into::into)?.into_data() {
            out.extend_from_slice(&data);
        }
    }
    if (out.len() - start) as u64 != len {
        return Err("the request body did not match its length".into());
    }
    Ok(())
}

/// Why an exchange gave no answer.
#[derive(Debug, thiserror::Error)]
pub(super) enum WireError {
    /// The connection ended (or was reset) before a byte of the answer came back.
    #[error("flagr closed the connection without answering")]
    Closed,
    #[error("reading flagr's answer: {0}")]
    Io(#[source] io::Error),
    #[error("flagr's answer is not HTTP/1.1 this proxy can frame: {0}")]
    Malformed(&'static str),
}

impl WireError {
    /// True when nothing came back: on a reused connection Flagr most likely closed it just
    /// as the request went out, and never read it.
    pub(super) fn nothing_back(&self) -> bool {
        matches!(self, WireError::Closed)
    }
}

fn nothing_back(e: io::Error) -> WireError {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionAborted => WireError::Closed,
        _ => WireError::Io(e),
    }
}

/// Writes the request and reads the answer's head, its headers into `room` (a map whose
/// allocation is reused: the request's own, cleared). The body is read later, by the
/// response's [`WireBody`], which puts `conn` back in `home` when it ends cleanly.
pub(super) async fn exchange(
    mut conn: Box<Conn>,
    request: &[u8],
    method: &Method,
    home: &OwnConnection,
    room: &mut HeaderMap,
) -> Result<Response<WireBody>, (Box<Conn>, WireError)> {
    if let Err(e) = conn.write_all(request).await {
        return Err((conn, nothing_back(e)));
    }
    let mut interim = false;
    loop {
        let head = match read_head(&mut conn, room).await {
            Ok(h) => h,
            // After a 1xx Flagr did answer something: it read the request.
            Err(WireError::Closed) if interim => {
                return Err((conn, WireError::Io(io::ErrorKind::UnexpectedEof.into())))
            }
            Err(e) => return Err((conn, e)),
        };
        match head.status.as_u16() {
            // 100 Continue and the like come before the answer; 101 was never asked for.
            101 => return Err((conn, WireError::Malformed("101 without an upgrade"))),
            100..=199 => {
                interim = true;
                continue;
            }
            _ => {}
        }
        let framing = match framing(method, head.status, &head.said) {
            Ok(f) => f,
            Err(why) => return Err((conn, WireError::Malformed(why))),
        };
        // Both Transfer-Encoding and Content-Length: the length is not the body's (RFC 9112
        // §6.3), so it did not reach the head's map, and the connection is not trusted again.
        let keep = head.version == Version::HTTP_11
            && !head.said.both()
            && !matches!(framing, Framing::UntilClose)
            && !head.said.close;
        let mut r = Response::new(WireBody::new(conn, framing, keep, home.clone()));
        *r.status_mut() = head.status;
        *r.version_mut() = head.version;
        *r.headers_mut() = head.headers;
        return Ok(r);
    }
}

struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    said: Said,
}

/// What a head says of its own framing and connection, gathered from its fields as they are
/// parsed, so nothing looks them up in the map again.
#[derive(Debug, Default)]
struct Said {
    /// Whether the last coding of the last Transfer-Encoding field is chunked; None without one.
    chunked: Option<bool>,
    /// The Content-Length all its fields agree on.
    length: Option<u64>,
    /// Why the Content-Length fields cannot be trusted, if they cannot.
    bad_length: Option<&'static str>,
    /// Some Content-Length field was there.
    has_length: bool,
    /// A Connection field names `close`.
    close: bool,
}

impl Said {
    fn add(&mut self, name: &HeaderName, value: &HeaderValue) {
        if *name == header::TRANSFER_ENCODING {
            // The last coding of the last field decides; an unreadable one is not chunked.
            let last = value
                .to_str()
                .ok()
                .and_then(|v| v.split(',').map(str::trim).rfind(|t| !t.is_empty()));
            self.chunked = Some(last.is_some_and(|t| t.eq_ignore_ascii_case("chunked")));
        } else if *name == header::CONTENT_LENGTH {
            self.has_length = true;
            if self.bad_length.is_none() {
                self.bad_length = self.add_length(value).err();
            }
        } else if *name == header::CONNECTION {
            self.close |= value
                .to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
        }
    }

    fn add_length(&mut self, value: &HeaderValue) -> Result<(), &'static str> {
        for part in value.to_str().map_err(|_| "bad content-length")?.split(',') {
            let part = part.trim();
            // Digits only: Rust's parse would also take a leading '+'.
            if !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err("bad content-length");
            }
            let n: u64 = part.parse().map_err(|_| "bad content-length")?;
            if self.length.is_some_and(|l| l != n) {
                return Err("conflicting content-length");
            }
            self.length = Some(n);
        }
        Ok(())
    }

    /// Both Transfer-Encoding and Content-Length.
    fn both(&self) -> bool {
        self.chunked.is_some() && self.has_length
    }
}

async fn read_head(conn: &mut Conn, room: &mut HeaderMap) -> Result<Head, WireError> {
    loop {
        if !conn.buf.is_empty() {
            if let Some(h) = parse_head(&mut conn.buf, room)? {
                return Ok(h);
            }
            if conn.buf.len() >= MAX_HEAD {
                return Err(WireError::Malformed("response head over 64 KiB"));
            }
        }
        let got_some = !conn.buf.is_empty();
        match std::future::poll_fn(|cx| conn.poll_fill(cx)).await {
            Ok(0) if got_some => {
                return Err(WireError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(0) => return Err(WireError::Closed),
            Ok(_) => {}
            Err(e) if got_some => return Err(WireError::Io(e)),
            Err(e) => return Err(nothing_back(e)),
        }
    }
}

/// A whole head off the front of `buf`, or None while it is incomplete. Header values are
/// slices of the head's bytes, not copies; the map is the one in `room`, taken.
fn parse_head(buf: &mut BytesMut, room: &mut HeaderMap) -> Result<Option<Head>, WireError> {
    // Slots left uninitialised: clearing all 100 cost more than parsing a typical answer.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(WireError::Malformed("over 100 response headers"))
        }
        Err(_) => return Err(WireError::Malformed("unparsable response head")),
    };
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(WireError::Malformed("no status"))?;
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let base = buf.as_ptr() as usize;
    // On the stack for any usual answer (Flagr sends four or five headers).
    let mut fields = SmallVec::<[(HeaderName, usize, usize); 16]>::new();
    for h in parsed.headers.iter() {
        let name =
            name_of(h.name.as_bytes()).map_err(|_| WireError::Malformed("bad header name"))?;
        let at = h.value.as_ptr() as usize - base;
        fields.push((name, at, h.value.len()));
    }
    let head = buf.split_to(len).freeze();
    // The client's request map (emptied when its head was encoded): hyper keeps each answer's
    // map for the connection's next request, so a kept connection allocates no map at all.
    let mut headers = std::mem::take(room);
    if !headers.is_empty() {
        headers.clear();
    }
    headers.reserve(fields.len());
    let mut said = Said::default();
    // Drained, not moved: the list is a few hundred bytes on the stack.
    for (name, at, n) in fields.drain(..) {
        let value = HeaderValue::from_maybe_shared(head.slice(at..at + n))
            .map_err(|_| WireError::Malformed("bad header value"))?;
        said.add(&name, &value);
        headers.append(name, value);
    }
    if said.both() {
        // Not the body's length (RFC 9112 §6.3): it does not reach the client.
        headers.remove(header::CONTENT_LENGTH);
    }
    Ok(Some(Head {
        status,
        version,
        headers,
        said,
    }))
}

/// The names Flagr's answers carry, as Go's net/http writes them, known without lowercasing
/// and looking up each (about 100 instructions a name); any other name the general way.
fn name_of(raw: &[u8]) -> Result<HeaderName, header::InvalidHeaderName> {
    Ok(match raw {
        b"Content-Type" => header::CONTENT_TYPE,
        b"Content-Length" => header::CONTENT_LENGTH,
        b"Date" => header::DATE,
        b"Vary" => header::VARY,
        _ => return HeaderName::from_bytes(raw),
    })
}

/// How the answer's body ends (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

fn framing(method: &Method, status: StatusCode, said: &Said) -> Result<Framing, &'static str> {
    if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    if let Some(chunked) = said.chunked {
        return Ok(if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    if let Some(why) = said.bad_length {
        return Err(why);
    }
    Ok(match said.length {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    })
}

/// Where a chunked body is.
#[derive(Clone, Copy, Debug)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

#[derive(Clone, Copy, Debug)]
enum State {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

/// Flagr's answer body, read from the connection as it is polled. Ended cleanly on a
/// connection Flagr keeps, it puts the connection back for the client's next request;
/// dropped early or failed, it closes it.
pub struct WireBody {
    conn: Option<Box<Conn>>,
    state: State,
    keep: bool,
    home: OwnConnection,
}

impl WireBody {
    fn new(conn: Box<Conn>, framing: Framing, keep: bool, home: OwnConnection) -> Self {
        let state = match framing {
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunk::Size),
            Framing::UntilClose => State::UntilClose,
        };
        let mut b = Self {
            conn: Some(conn),
            state,
            keep,
            home,
        };
        if matches!(state, State::Done) {
            b.finish();
        }
        b
    }

    /// The body ended: the connection goes home if Flagr keeps it and sent nothing more.
    fn finish(&mut self) {
        self.state = State::Done;
        if let Some(c) = self.conn.take() {
            if self.keep && c.buf.is_empty() {
                self.home.put(c);
            }
        }
    }

    fn fail(&mut self, e: io::Error) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.state = State::Done;
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }
}

fn bad(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

impl Body for WireBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let me = &mut *self;
        loop {
            let Some(conn) = me.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let buf = &mut conn.buf;
            // What the bytes in hand allow, before reading more.
            match me.state {
                State::Done => return Poll::Ready(None),
                State::Length(rest) | State::Chunked(Chunk::Data(rest)) if !buf.is_empty() => {
                    let n = rest.min(buf.len() as u64);
                    let data = buf.split_to(n as usize).freeze();
                    let rest = rest - n;
                    me.state = match me.state {
                        State::Length(_) => State::Length(rest),
                        _ if rest == 0 => State::Chunked(Chunk::DataEnd),
                        _ => State::Chunked(Chunk::Data(rest)),
                    };
                    if matches!(me.state, State::Length(0)) {
                        me.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::UntilClose if !buf.is_empty() => {
                    let data = buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Chunked(Chunk::Size) if !buf.is_empty() => {
                    // httparse would read an empty size line as the last chunk.
                    if !buf[0].is_ascii_hexdigit() {
                        return me.fail(bad("bad chunk size"));
                    }
                    match httparse::parse_chunk_size(buf) {
                        Ok(httparse::Status::Complete((used, size))) => {
                            buf.advance(used);
                            me.state = State::Chunked(if size == 0 {
                                Chunk::Trailers
                            } else {
                                Chunk::Data(size)
                            });
                            continue;
                        }
                        Ok(httparse::Status::Partial) if buf.len() < 1024 => {}
                        _ => return me.fail(bad("bad chunk size")),
                    }
                }
                State::Chunked(Chunk::DataEnd) if buf.len() >= 2 => {
                    if &buf[..2] != b"\r\n" {
                        return me.fail(bad("chunk not followed by CRLF"));
                    }
                    buf.advance(2);
                    me.state = State::Chunked(Chunk::Size);
                    continue;
                }
                // Trailer fields are read past, not passed on (HTTP/1 clients of hyper's
                // server would not get them either).
                State::Chunked(Chunk::Trailers) if !buf.is_empty() => {
                    let end = if buf.starts_with(b"\r\n") {
                        Some(2)
                    } else {
                        buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
                    };
                    match end {
                        Some(n) => {
                            buf.advance(n);
                            me.finish();
                            return Poll::Ready(None);
                        }
                        None if buf.len() >= MAX_HEAD => {
                            return me.fail(bad("trailers over 64 KiB"));
                        }
                        None => {}
                    }
                }
                _ => {}
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(me.state, State::UntilClose) => {
                    me.state = State::Done;
                    me.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return me.fail(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(e) => return me.fail(e),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done | State::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// For the fuzz target only (`cargo fuzz` builds with `--cfg fuzzing`): `answer` as the bytes
/// Flagr sends, then its end, read through as the proxy reads an answer. Gives the head, the
/// body (or that reading it failed) and whether the connection would have gone home; None when
/// the exchange gave no answer.
#[cfg(fuzzing)]
pub async fn fuzz_answer(
    answer: &[u8],
    method: &Method,
) -> Option<(http::response::Parts, Option<Bytes>, bool)> {
    let (ours, mut theirs) = UnixStream::pair().ok()?;
    let bytes = answer.to_vec();
    let flagr = tokio::spawn(async move {
        let _ = theirs.write_all(&bytes).await;
        let _ = theirs.shutdown().await;
        theirs
    });
    let home = OwnConnection::default();
    let conn = Conn::new(Stream::Unix(ours), Weak::new());
    let r = exchange(
        conn,
        b"GET / HTTP/1.1\r\n\r\n",
        method,
        &home,
        &mut HeaderMap::new(),
    )
    .await;
    let out = match r {
        Ok(r) => {
            let (parts, body) = r.into_parts();
            let body = body.collect().await.ok().map(|b| b.to_bytes());
            let kept = home.0.lock().is_ok_and(|c| c.conn.is_some());
            Some((parts, body, kept))
        }
        Err(_) => None,
    };
    drop(flagr.await);
    out
}

/// A probe read of an idle connection to Flagr: readable (at its end, in error, or bytes nobody
/// asked for) means it cannot carry a request. Only "would block" means it is fine.
fn says_closed(probe: io::Result<usize>) -> bool {
    !matches!(probe, Err(ref e) if e.kind() == io::ErrorKind::WouldBlock)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn head(bytes: &[u8]) -> Result<Option<Head>, WireError> {
        parse_head(&mut BytesMut::from(bytes), &mut HeaderMap::new())
    }

    #[test]
    fn a_head_is_parsed_once_whole_and_its_values_kept() {
        assert!(head(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap().is_none());
        let h = head(b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nX-A: 1\r\nx-a: 2\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.status, StatusCode::NOT_FOUND);
        assert_eq!(h.version, Version::HTTP_11);
        let xa: Vec<_> = h.headers.get_all("x-a").iter().collect();
        assert_eq!(xa, ["1", "2"]);
        assert!(matches!(
            head(b"HTTP/1.1 abc\r\n\r\n"),
            Err(WireError::Malformed(_))
        ));
        let many = format!("HTTP/1.1 200 OK\r\n{}\r\n", "a: b\r\n".repeat(101));
        assert!(matches!(
            head(many.as_bytes()),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let h = |pairs: &[(&str, &str)]| {
            let mut said = Said::default();
            for (k, v) in pairs {
                said.add(
                    &HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    &v.parse().unwrap(),
                );
            }
            said
        };
        let ok = StatusCode::OK;
        let f = |m: &Method, s, hs: &[(&str, &str)]| framing(m, s, &h(hs));
        let cl = [("content-length", "5")];
        assert_eq!(f(&Method::GET, ok, &cl), Ok(Framing::Length(5)));
        assert_eq!(f(&Method::HEAD, ok, &cl), Ok(Framing::Empty));
        assert_eq!(
            f(&Method::GET, StatusCode::NO_CONTENT, &[]),
            Ok(Framing::Empty)
        );
        assert_eq!(
            f(&Method::GET, StatusCode::NOT_MODIFIED, &cl),
            Ok(Framing::Empty)
        );
        // Transfer-Encoding wins over Content-Length; chunked must come last.
        let te = [
            ("transfer-encoding", "gzip, chunked"),
            ("content-length", "5"),
        ];
        assert_eq!(f(&Method::GET, ok, &te), Ok(Framing::Chunked));
        let te = [("transfer-encoding", "chunked, gzip")];
        assert_eq!(f(&Method::GET, ok, &te), Ok(Framing::UntilClose));
        // A coding that is not visible ASCII cannot be read as chunked.
        let te = [
            ("transfer-encoding", "chunked\u{e9}"),
            ("content-length", "5"),
        ];
        assert_eq!(f(&Method::GET, ok, &te), Ok(Framing::UntilClose));
        assert_eq!(f(&Method::GET, ok, &[]), Ok(Framing::UntilClose));
        let same = [("content-length", "5, 5"), ("content-length", "5")];
        assert_eq!(f(&Method::GET, ok, &same), Ok(Framing::Length(5)));
        let differ = [("content-length", "5"), ("content-length", "6")];
        assert!(f(&Method::GET, ok, &differ).is_err());
        assert!(f(&Method::GET, ok, &[("content-length", "-1")]).is_err());
    }

    /// A plain request over `conn`, up to its answer's head.
    async fn ask(
        conn: Box<Conn>,
        home: &OwnConnection,
        method: &Method,
    ) -> Result<Response<WireBody>, WireError> {
        let request = b"GET / HTTP/1.1\r\n\r\n";
        let room = &mut HeaderMap::new();
        exchange(conn, request, method, home, room)
            .await
            .map_err(|(_, e)| e)
    }

    /// A connection and Flagr's end of it, on loopback; it goes nowhere when its client
    /// connection closes.
    pub(in super::super) async fn pair() -> (Box<Conn>, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (Conn::new(Stream::Tcp(c), Weak::new()), s)
    }

    impl Conn {
        /// Tells connections apart.
        pub(in super::super) fn local_port(&self) -> u16 {
            match &self.stream {
                Stream::Tcp(s) => s.local_addr().unwrap().port(),
                Stream::Unix(_) => 0,
            }
        }
    }

    /// Chunked bodies in pieces as small as a byte, trailers read past; the connection goes
    /// home after the answer, and not when Flagr says it closes.
    #[tokio::test]
    async fn chunked_answers_arriving_byte_by_byte_are_whole_and_the_connection_kept() {
        use tokio::io::AsyncReadExt;
        for close in [false, true] {
            let (conn, mut flagr) = pair().await;
            let home = OwnConnection::default();
            let served = tokio::spawn(async move {
                let mut req = [0u8; 1024];
                let n = flagr.read(&mut req).await.unwrap();
                let head = if close {
                    "HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
                } else {
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                };
                let answer =
                    format!("{head}5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-t: 1\r\n\r\n");
                for b in answer.as_bytes() {
                    flagr.write_all(&[*b]).await.unwrap();
                    flagr.flush().await.unwrap();
                }
                (String::from_utf8_lossy(&req[..n]).into_owned(), flagr)
            });
            // The room is a used request map: nothing of it may reach the answer.
            let mut room = HeaderMap::new();
            room.insert("x-old", HeaderValue::from_static("1"));
            let r = exchange(
                conn,
                b"GET / HTTP/1.1\r\nhost: f\r\n\r\n",
                &Method::GET,
                &home,
                &mut room,
            )
            .await
            .map_err(|(_, e)| e)
            .unwrap();
            assert!(!r.headers().contains_key("x-old"));
            assert_eq!(r.status(), StatusCode::OK);
            let body = r.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"hello, world");
            let (req, _flagr) = served.await.unwrap();
            assert!(req.starts_with("GET / HTTP/1.1\r\n"));
            assert_eq!(home.lock().conn.is_some(), !close);
        }
    }

    /// A body dropped before its end takes the connection with it; one read to its end brings
    /// it back, and a connection Flagr then closes is not handed out again.
    #[tokio::test]
    async fn only_a_connection_read_to_the_end_and_still_open_is_reused() {
        use tokio::io::AsyncReadExt;
        let (conn, mut flagr) = pair().await;
        let home = OwnConnection::default();
        let mut req = [0u8; 256];
        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789";
        flagr.write_all(answer).await.unwrap();
        let r = ask(conn, &home, &Method::GET).await.unwrap();
        let _ = flagr.read(&mut req).await.unwrap();
        assert_eq!(r.body().size_hint().exact(), Some(10));
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"0123456789");
        let conn = home.take(IDLE).expect("kept after a whole answer");
        // Half an answer, then the body is dropped: nothing goes home.
        flagr
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
            .await
            .unwrap();
        let r = ask(conn, &home, &Method::GET).await.unwrap();
        let mut body = r.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"01234");
        drop(body);
        assert!(home.take(IDLE).is_none());
        // Kept, then closed by Flagr while idle: not handed out.
        let (conn, flagr) = pair().await;
        home.put(conn);
        drop(flagr);
        // The event loop has to see the close first: bounded wait, no timing asserted.
        let mut seen = false;
        for _ in 0..1000 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            if home.lock().conn.as_ref().unwrap().stale() {
                seen = true;
                break;
            }
        }
        assert!(seen, "the closed connection was never seen as stale");
        assert!(home.take(IDLE).is_none());
        // Open but idle longer than allowed: not handed out either.
        let (conn, _flagr) = pair().await;
        home.put(conn);
        assert!(home.take(IDLE).is_some());
        let (conn, _flagr) = pair().await;
        home.put(conn);
        assert!(home.take(Duration::ZERO).is_none());
    }

    /// One answer as Flagr might write it, read through; what the client gets, whether the
    /// connection went home, and how the exchange ended.
    async fn through(answer: &[u8], method: Method) -> Result<(Response<Bytes>, bool), String> {
        let (conn, mut flagr) = pair().await;
        let home = OwnConnection::default();
        flagr.write_all(answer).await.unwrap();
        let r = ask(conn, &home, &method).await.map_err(|e| e.to_string())?;
        let (parts, body) = r.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        let kept = home.take(IDLE).is_some();
        Ok((Response::from_parts(parts, body), kept))
    }

    /// Each way an answer can be framed (RFC 9112 §6.3), and when its connection is kept.
    #[tokio::test]
    async fn answers_are_framed_and_connections_kept_only_when_sound() {
        let get = || Method::GET;
        // Interim answers are read past.
        let (r, kept) = through(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            get(),
        )
        .await
        .unwrap();
        assert_eq!(
            (r.status(), &r.body()[..], kept),
            (StatusCode::OK, &b"ok"[..], true)
        );
        // No body after HEAD, 204 or 304, whatever the headers say; the connection is kept.
        let (r, kept) = through(
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
            Method::HEAD,
        )
        .await
        .unwrap();
        assert_eq!((r.body().len(), kept), (0, true));
        assert_eq!(r.headers()["content-length"], "9");
        let (r, kept) = through(b"HTTP/1.1 204 No Content\r\n\r\n", get())
            .await
            .unwrap();
        assert_eq!(
            (r.status(), r.body().len(), kept),
            (StatusCode::NO_CONTENT, 0, true)
        );
        // Not kept: Flagr says it closes; HTTP/1.0; bytes after the body; no length at all.
        for answer in [
            &b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: x-a,\r\nConnection: Keep-Alive, CLOSE\r\n\r\nok",
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n",
        ] {
            let (r, kept) = through(answer, get()).await.unwrap();
            assert_eq!((&r.body()[..], kept), (&b"ok"[..], false));
        }
        // Transfer-Encoding and Content-Length: the length is dropped, the connection too.
        let (r, kept) = through(
            b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n\
              2\r\nok\r\n0\r\n\r\n",
            get(),
        )
        .await
        .unwrap();
        assert_eq!((&r.body()[..], kept), (&b"ok"[..], false));
        assert!(!r.headers().contains_key("content-length"));
    }

    /// Answers that cannot be framed end in an error, never in a guess.
    #[tokio::test]
    async fn answers_that_cannot_be_framed_are_errors() {
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}\r\n", "a".repeat(MAX_HEAD));
        for answer in [
            huge.as_bytes(),
            b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        ] {
            assert!(through(answer, Method::GET).await.is_err());
        }
        // A close after a 1xx is not "nothing came back": the request was read.
        let (conn, mut flagr) = pair().await;
        flagr
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .unwrap();
        drop(flagr);
        let home = OwnConnection::default();
        let e = ask(conn, &home, &Method::GET)
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(!e.nothing_back());
    }

    const IDLE: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn a_request_is_encoded_with_its_body_and_length() {
        let req = http::Request::post("/api/v1/evaluation?x=1")
            .header("host", "flagr")
            .header("content-length", "99")
            .header("expect", "100-continue")
            .header("x-b", "2")
            .body(http_body_util::Full::new(Bytes::from_static(b"{\"a\":1}")))
            .unwrap();
        let peer = HeaderValue::from_static("192.0.2.7");
        let out = encode(req, &peer).await;
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /api/v1/evaluation?x=1 HTTP/1.1\r\nhost: flagr\r\nx-b: 2\r\n\
             x-forwarded-for: 192.0.2.7\r\nx-forwarded-proto: http\r\n\
             content-length: 7\r\n\r\n{\"a\":1}"
        );
        // Without a Host, the authority given.
        let req = http::Request::get("/")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        assert_eq!(
            encode(req, &peer).await,
            b"GET / HTTP/1.1\r\nhost: flagr:18000\r\n\
              x-forwarded-for: 192.0.2.7\r\nx-forwarded-proto: http\r\n\r\n"
        );
    }

    /// The forwarding headers written as bytes are those the map form gives (headers.rs).
    #[tokio::test]
    async fn forwarding_headers_in_bytes_match_the_map_form() {
        let ip = HeaderValue::from_static("192.0.2.7");
        let given: [&[(&str, &str)]; 5] = [
            &[],
            &[("x-forwarded-for", "203.0.113.9")],
            &[("x-forwarded-for", "")],
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-for", "198.51.100.1"),
            ],
            &[("x-forwarded-proto", "https"), ("x-a", "1")],
        ];
        for headers in given {
            let mut req = http::Request::get("/").header("host", "flagr");
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let req = req.body(http_body_util::Empty::<Bytes>::new()).unwrap();
            let mut mapped = req.headers().clone();
            crate::proxy::headers::add_forwarded(&mut mapped, &ip);
            let mut want: Vec<String> = mapped
                .iter()
                .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
                .collect();
            want.sort();
            let out = String::from_utf8(encode(req, &ip).await).unwrap();
            let mut got: Vec<String> = out
                .lines()
                .skip(1)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            got.sort();
            assert_eq!(got, want, "{headers:?}");
        }
    }

    async fn encode<B>(req: http::Request<B>, peer: &HeaderValue) -> Vec<u8>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let (parts, mut body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut out = encode_head(
            &parts.method,
            path,
            &parts.headers,
            "flagr:18000",
            peer,
            &body,
        );
        add_body(&mut out, &mut body).await.unwrap();
        out
    }
}
