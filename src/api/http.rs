// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! HTTP/1.1 messages: a request read from the bytes a client sent so far (parsed by
//! `httparse`, within fixed limits) and a response written out whole.
//!
//! One request per connection: every response carries `Connection: close`.

/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// Largest request body.
pub const MAX_BODY: usize = 64 * 1024;
/// Most headers in a request.
const MAX_HEADERS: usize = 32;

/// A complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The path, without a query string.
    pub path: String,
    /// The body (`Content-Length` bytes).
    pub body: Vec<u8>,
}

/// A request that cannot be served; each maps to a status code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    /// The bytes are not an HTTP/1.x request.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The head is longer than [`MAX_HEAD`].
    #[error("request head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// The body is longer than [`MAX_BODY`].
    #[error("request body of {0} bytes is larger than {MAX_BODY}")]
    BodyTooLarge(usize),
    /// A chunked or otherwise encoded body.
    #[error("Transfer-Encoding is not supported; send the body with Content-Length")]
    TransferEncoding,
}

impl HttpError {
    /// The status code of the reply.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_) => 400,
            HttpError::HeadTooLarge => 431,
            HttpError::BodyTooLarge(_) => 413,
            HttpError::TransferEncoding => 501,
        }
    }
}

/// Parse the bytes received so far: `Ok(None)` while the request is incomplete.
pub fn parse_request(buf: &[u8]) -> Result<Option<Request>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(HttpError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::Malformed(format!(
                "more than {MAX_HEADERS} headers"
            )))
        }
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    if head_len > MAX_HEAD {
        return Err(HttpError::HeadTooLarge);
    }
    let mut length = 0usize;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::TransferEncoding);
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| HttpError::Malformed("invalid Content-Length".into()))?;
        }
    }
    if length > MAX_BODY {
        return Err(HttpError::BodyTooLarge(length));
    }
    let Some(body) = buf.get(head_len..head_len + length) else {
        return Ok(None);
    };
    let target = req.path.unwrap_or("/");
    let path = target.split(['?', '#']).next().unwrap_or("/");
    Ok(Some(Request {
        method: req.method.unwrap_or("").to_string(),
        path: path.to_string(),
        body: body.to_vec(),
    }))
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Extra headers (`Allow`, ...).
    pub headers: Vec<(&'static str, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// The JSON content type.
pub const JSON: &str = "application/json";

impl Response {
    /// A JSON body.
    pub fn json(status: u16, value: &impl serde::Serialize) -> Response {
        match serde_json::to_vec_pretty(value) {
            Ok(mut body) => {
                body.push(b'\n');
                Response {
                    status,
                    content_type: JSON,
                    headers: Vec::new(),
                    body,
                }
            }
            Err(e) => Response::error(500, &format!("cannot encode the reply: {e}")),
        }
    }

    /// An error: `{"error": message}`.
    pub fn error(status: u16, message: &str) -> Response {
        let mut body = serde_json::json!({ "error": message })
            .to_string()
            .into_bytes();
        body.push(b'\n');
        Response {
            status,
            content_type: JSON,
            headers: Vec::new(),
            body,
        }
    }

    /// A text body.
    pub fn text(content_type: &'static str, body: String) -> Response {
        Response {
            status: 200,
            content_type,
            headers: Vec::new(),
            body: body.into_bytes(),
        }
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// The reason phrase of `status`.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_complete_only_with_its_body() {
        let full =
            b"PUT /queues/0/rate-limit?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n{}ab";
        for n in 0..full.len() {
            assert_eq!(parse_request(&full[..n]), Ok(None), "{n} bytes");
        }
        let r = parse_request(full).unwrap().unwrap();
        assert_eq!(r.method, "PUT");
        assert_eq!(r.path, "/queues/0/rate-limit");
        assert_eq!(r.body, b"{}ab");
    }

    #[test]
    fn limits_and_garbage_are_refused() {
        assert!(matches!(
            parse_request(b"\x00\x01garbage\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
        let long = vec![b'a'; MAX_HEAD + 1];
        let mut head = b"GET /".to_vec();
        head.extend_from_slice(&long);
        assert_eq!(parse_request(&head), Err(HttpError::HeadTooLarge));
        let big = format!("PUT / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
        assert_eq!(
            parse_request(big.as_bytes()).map_err(|e| e.status()),
            Err(413)
        );
        assert_eq!(
            parse_request(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(HttpError::TransferEncoding)
        );
        assert!(matches!(
            parse_request(b"PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
    }

    #[test]
    fn a_response_has_its_length_and_closes() {
        let r = Response::error(404, "no such route").to_bytes();
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"));
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        assert!(text.contains(&format!("Content-Length: {}\r\n", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "no such route");
    }
}
