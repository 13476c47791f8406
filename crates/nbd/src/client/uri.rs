//! NBD URIs (the subset of the NBD URI spec a block device needs):
//! `nbd://host[:port][/name]` and `nbd+unix:///name?socket=/path`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

/// Where the server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    pub endpoint: Endpoint,
    /// Export name ("" selects the server's default export).
    pub name: String,
}

pub const DEFAULT_PORT: u16 = 10809;

/// Decode `%XX` escapes (names and paths may contain any byte).
fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or("truncated %-escape")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad %-escape %{hex}"))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "URI is not UTF-8 after decoding".into())
}

/// Parse and resolve an NBD URI. Host names are resolved here (once, at open).
pub fn parse(uri: &str) -> Result<Uri, String> {
    let bad = |why: &str| format!("invalid NBD URI {uri:?}: {why}");
    if let Some(rest) = uri.strip_prefix("nbd+unix://") {
        let (path, query) = rest
            .split_once('?')
            .ok_or_else(|| bad("nbd+unix needs ?socket=PATH"))?;
        if !path.is_empty() && !path.starts_with('/') {
            return Err(bad("nbd+unix takes no host"));
        }
        let name = percent_decode(path.strip_prefix('/').unwrap_or(path)).map_err(|e| bad(&e))?;
        let socket = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("socket="))
            .ok_or_else(|| bad("missing socket= parameter"))?;
        let socket = percent_decode(socket).map_err(|e| bad(&e))?;
        if socket.is_empty() {
            return Err(bad("empty socket path"));
        }
        return Ok(Uri {
            endpoint: Endpoint::Unix(socket.into()),
            name,
        });
    }
    let rest = uri
        .strip_prefix("nbd://")
        .ok_or_else(|| bad("expected nbd:// or nbd+unix://"))?;
    let rest = rest.split_once('?').map_or(rest, |(a, _)| a);
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let name = percent_decode(path).map_err(|e| bad(&e))?;
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("unclosed [ in host"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(bad("junk after ]")),
        };
        (h, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| bad("bad port"))?,
        None => DEFAULT_PORT,
    };
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| bad(&format!("cannot resolve {host}: {e}")))?
        .next()
        .ok_or_else(|| bad("host resolves to nothing"))?;
    Ok(Uri {
        endpoint: Endpoint::Tcp(addr),
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_we_support() {
        let u = parse("nbd://127.0.0.1:1234/disk").unwrap();
        assert_eq!(u.endpoint, Endpoint::Tcp("127.0.0.1:1234".parse().unwrap()));
        assert_eq!(u.name, "disk");
        let u = parse("nbd://127.0.0.1").unwrap();
        assert_eq!(
            u.endpoint,
            Endpoint::Tcp("127.0.0.1:10809".parse().unwrap())
        );
        assert_eq!(u.name, "");
        let u = parse("nbd://[::1]:99/a%20b").unwrap();
        assert_eq!(u.endpoint, Endpoint::Tcp("[::1]:99".parse().unwrap()));
        assert_eq!(u.name, "a b");
        let u = parse("nbd+unix:///x?socket=/tmp/s.sock").unwrap();
        assert_eq!(u.endpoint, Endpoint::Unix("/tmp/s.sock".into()));
        assert_eq!(u.name, "x");
        let u = parse("nbd+unix://?socket=/s").unwrap();
        assert_eq!(u.name, "");
    }

    #[test]
    fn rejects_bad_uris() {
        for s in [
            "http://x",
            "nbd://",
            "nbd://host:99999/x",
            "nbd://[::1/x",
            "nbd+unix:///x",
            "nbd+unix:///x?socket=",
            "nbd://h/%zz",
        ] {
            assert!(parse(s).is_err(), "{s}");
        }
    }
}
