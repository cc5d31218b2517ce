//! Country lookup for the `country` policy condition (F14), from a
//! MaxMind-format database (`--geoip-db`, e.g. GeoLite2-Country). An address
//! the database does not know has no country, and the condition fails closed.
//!
//! [`write_country_db`] writes a small database in the same format: tests and
//! the demo use it to give lab addresses countries. It is hand-written
//! because no maintained Rust crate writes MMDB files; it supports only what
//! a country database needs (maps and strings, no overlapping networks).

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
#[error("cannot read the GeoIP database {path}: {source}")]
pub struct GeoIpError {
    path: String,
    source: maxminddb::MaxMindDbError,
}

pub struct GeoIp {
    reader: maxminddb::Reader<Vec<u8>>,
}

#[derive(Deserialize)]
struct CountryRecord<'a> {
    #[serde(borrow)]
    country: Option<IsoCode<'a>>,
    #[serde(borrow)]
    registered_country: Option<IsoCode<'a>>,
}

#[derive(Deserialize)]
struct IsoCode<'a> {
    iso_code: Option<&'a str>,
}

impl GeoIp {
    pub fn open(path: &Path) -> Result<GeoIp, GeoIpError> {
        let reader = maxminddb::Reader::open_readfile(path).map_err(|source| GeoIpError {
            path: path.display().to_string(),
            source,
        })?;
        Ok(GeoIp { reader })
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Result<GeoIp, GeoIpError> {
        let reader = maxminddb::Reader::from_source(bytes).map_err(|source| GeoIpError {
            path: "(memory)".to_string(),
            source,
        })?;
        Ok(GeoIp { reader })
    }

    /// The ISO 3166 code of the country `ip` is in, if the database knows.
    pub fn country(&self, ip: IpAddr) -> Option<String> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let result = self.reader.lookup(ip).ok()?;
        let record: CountryRecord = result.decode().ok()??;
        record
            .country
            .and_then(|c| c.iso_code)
            .or_else(|| record.registered_country.and_then(|c| c.iso_code))
            .map(str::to_ascii_uppercase)
    }
}

/// Writes an IPv6 (with IPv4 at `::/96`) country database mapping each
/// network to `{"country": {"iso_code": CODE}}`.
pub fn write_country_db(entries: &[(IpNet, &str)]) -> Vec<u8> {
    enum Child {
        Empty,
        Node(usize),
        Data(usize),
    }
    let mut nodes: Vec<[Child; 2]> = vec![[Child::Empty, Child::Empty]];
    let mut data = Vec::new();
    for (net, code) in entries {
        let offset = data.len();
        write_map_header(&mut data, 1);
        write_string(&mut data, "country");
        write_map_header(&mut data, 1);
        write_string(&mut data, "iso_code");
        write_string(&mut data, code);
        let (bits, prefix) = match net {
            IpNet::V4(v4) => (
                u128::from(v4.network().to_bits()),
                96 + v4.prefix_len() as usize,
            ),
            IpNet::V6(v6) => (v6.network().to_bits(), v6.prefix_len() as usize),
        };
        let mut node = 0;
        for depth in 0..prefix {
            let bit = ((bits >> (127 - depth)) & 1) as usize;
            if depth + 1 == prefix {
                nodes[node][bit] = Child::Data(offset);
                break;
            }
            node = match nodes[node][bit] {
                Child::Node(next) => next,
                _ => {
                    nodes.push([Child::Empty, Child::Empty]);
                    let next = nodes.len() - 1;
                    nodes[node][bit] = Child::Node(next);
                    next
                }
            };
        }
    }
    let node_count = nodes.len();
    let mut out = Vec::new();
    for node in &nodes {
        for child in node {
            let record = match child {
                Child::Empty => node_count,
                Child::Node(index) => *index,
                Child::Data(offset) => node_count + 16 + offset,
            } as u32;
            out.extend_from_slice(&record.to_be_bytes()[1..]);
        }
    }
    out.extend_from_slice(&[0u8; 16]);
    out.extend_from_slice(&data);
    out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
    write_map_header(&mut out, 9);
    write_string(&mut out, "binary_format_major_version");
    write_uint(&mut out, 5, 2);
    write_string(&mut out, "binary_format_minor_version");
    write_uint(&mut out, 5, 0);
    write_string(&mut out, "build_epoch");
    write_uint(&mut out, 9, 0);
    write_string(&mut out, "database_type");
    write_string(&mut out, "Postern-Test-Country");
    write_string(&mut out, "description");
    write_map_header(&mut out, 0);
    write_string(&mut out, "ip_version");
    write_uint(&mut out, 5, 6);
    write_string(&mut out, "languages");
    out.extend_from_slice(&[0x00, 0x04]); // an empty array (extended type 11)
    write_string(&mut out, "node_count");
    write_uint(&mut out, 6, node_count as u64);
    write_string(&mut out, "record_size");
    write_uint(&mut out, 5, 24);
    out
}

fn write_map_header(out: &mut Vec<u8>, pairs: u8) {
    out.push((7 << 5) | pairs);
}

fn write_string(out: &mut Vec<u8>, text: &str) {
    // Our keys and codes are shorter than 29 bytes.
    out.push((2 << 5) | text.len() as u8);
    out.extend_from_slice(text.as_bytes());
}

/// An unsigned integer of MMDB type `kind` (5 uint16, 6 uint32, 9 uint64).
fn write_uint(out: &mut Vec<u8>, kind: u8, value: u64) {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    let payload = &bytes[skip..];
    if kind <= 7 {
        out.push((kind << 5) | payload.len() as u8);
    } else {
        out.push(payload.len() as u8);
        out.push(kind - 7);
    }
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_database_reads_back() {
        let bytes = write_country_db(&[
            ("198.18.0.0/24".parse().unwrap(), "DE"),
            ("198.18.1.0/24".parse().unwrap(), "fr"),
            ("2001:db8::/32".parse().unwrap(), "US"),
        ]);
        let geoip = GeoIp::from_bytes(bytes).unwrap();
        assert_eq!(
            geoip.country("198.18.0.77".parse().unwrap()).as_deref(),
            Some("DE")
        );
        assert_eq!(
            geoip.country("198.18.1.1".parse().unwrap()).as_deref(),
            Some("FR")
        );
        assert_eq!(
            geoip
                .country("::ffff:198.18.0.1".parse().unwrap())
                .as_deref(),
            Some("DE")
        );
        assert_eq!(
            geoip.country("2001:db8::5".parse().unwrap()).as_deref(),
            Some("US")
        );
        assert_eq!(geoip.country("198.18.2.1".parse().unwrap()), None);
        assert_eq!(geoip.country("10.0.0.1".parse().unwrap()), None);
        assert!(GeoIp::from_bytes(b"not a database".to_vec()).is_err());
    }
}
