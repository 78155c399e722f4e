//! Reading protobuf's wire format without a schema: the fields of one message, in order, each
//! checked against the buffer. The one decoder of untrusted protobuf bytes in the crate: etcd's
//! `KeyValue`s, leases and alarms in a snapshot, the WAL and `.snap` of a built data dir, and the
//! envelope of a Kubernetes object. (What a restore *writes* is hand-encoded in
//! `restore/datadir/proto.rs`, byte for byte as etcd's marshallers.) Pure; bad input is an
//! error, never a panic.

/// One field's value as the wire carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// One field of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    pub number: u64,
    pub value: Value<'a>,
}

fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        out |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(out);
        }
    }
    None
}

/// The fields of `msg`, in wire order; `None` when any field is malformed (as a protobuf
/// decoder would refuse the message).
pub fn fields(msg: &[u8]) -> Option<Vec<Field<'_>>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < msg.len() {
        let tag = varint(msg, &mut i)?;
        let (number, wire) = (tag >> 3, tag & 7);
        if number == 0 {
            return None;
        }
        let value = match wire {
            0 => Value::Varint(varint(msg, &mut i)?),
            1 => {
                let end = i.checked_add(8).filter(|&e| e <= msg.len())?;
                let v = u64::from_le_bytes(msg[i..end].try_into().ok()?);
                i = end;
                Value::Fixed64(v)
            }
            2 => {
                let len = usize::try_from(varint(msg, &mut i)?).ok()?;
                let end = i.checked_add(len).filter(|&e| e <= msg.len())?;
                let v = &msg[i..end];
                i = end;
                Value::Bytes(v)
            }
            5 => {
                let end = i.checked_add(4).filter(|&e| e <= msg.len())?;
                let v = u32::from_le_bytes(msg[i..end].try_into().ok()?);
                i = end;
                Value::Fixed32(v)
            }
            _ => return None,
        };
        out.push(Field { number, value });
    }
    Some(out)
}

/// A decoded message: its fields, with getters that follow proto semantics (the last
/// occurrence of a scalar wins; absent means the zero value to the caller that asks so).
#[derive(Debug, Clone)]
pub struct Message<'a> {
    fields: Vec<Field<'a>>,
}

impl<'a> Message<'a> {
    pub fn parse(msg: &'a [u8]) -> Option<Message<'a>> {
        fields(msg).map(|fields| Message { fields })
    }

    fn last(&self, number: u64) -> Option<Value<'a>> {
        self.fields
            .iter()
            .rev()
            .find(|f| f.number == number)
            .map(|f| f.value)
    }

    /// A varint field (uint64, int64 as two's complement, bool, enum).
    pub fn uint(&self, number: u64) -> Option<u64> {
        match self.last(number)? {
            Value::Varint(v) => Some(v),
            _ => None,
        }
    }

    /// An int64 field.
    pub fn int(&self, number: u64) -> Option<i64> {
        self.uint(number).map(|v| v as i64)
    }

    /// A length-delimited field (bytes, string, message).
    pub fn bytes(&self, number: u64) -> Option<&'a [u8]> {
        match self.last(number)? {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// A string field that is valid UTF-8.
    pub fn str(&self, number: u64) -> Option<&'a str> {
        self.bytes(number).and_then(|b| std::str::from_utf8(b).ok())
    }

    /// Every length-delimited occurrence of a repeated field (messages, strings, map entries).
    pub fn repeated_bytes(&self, number: u64) -> Vec<&'a [u8]> {
        self.fields
            .iter()
            .filter(|f| f.number == number)
            .filter_map(|f| match f.value {
                Value::Bytes(b) => Some(b),
                _ => None,
            })
            .collect()
    }

    /// A repeated varint field, packed or not (a decoder accepts both); `None` when a packed
    /// run is malformed.
    pub fn repeated_uint(&self, number: u64) -> Option<Vec<u64>> {
        let mut out = Vec::new();
        for f in self.fields.iter().filter(|f| f.number == number) {
            match f.value {
                Value::Varint(v) => out.push(v),
                Value::Bytes(b) => {
                    let mut i = 0;
                    while i < b.len() {
                        out.push(varint(b, &mut i)?);
                    }
                }
                _ => return None,
            }
        }
        Some(out)
    }

    /// Field numbers present, in wire order (for checks that a message holds only what it
    /// should).
    pub fn numbers(&self) -> impl Iterator<Item = u64> + '_ {
        self.fields.iter().map(|f| f.number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_wire_type_and_refuses_what_a_decoder_would() {
        // 1: varint 150, 2: "hi", 3: fixed64 1, 4: fixed32 2, 5: packed [1, 300]
        let msg = [
            0x08, 0x96, 0x01, 0x12, 2, b'h', b'i', 0x19, 1, 0, 0, 0, 0, 0, 0, 0, 0x25, 2, 0, 0, 0,
            0x2a, 3, 1, 0xac, 0x02,
        ];
        let m = Message::parse(&msg).unwrap();
        assert_eq!(m.uint(1), Some(150));
        assert_eq!(m.str(2), Some("hi"));
        assert_eq!(m.repeated_uint(5), Some(vec![1, 300]));
        assert_eq!(m.uint(9), None);
        assert_eq!(m.numbers().collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        // Unpacked repeated, last scalar wins.
        let m = Message::parse(&[0x08, 1, 0x08, 2]).unwrap();
        assert_eq!(m.repeated_uint(1), Some(vec![1, 2]));
        assert_eq!(m.uint(1), Some(2));
        // int64 -1 is ten bytes of two's complement.
        let m = Message::parse(&[
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1,
        ])
        .unwrap();
        assert_eq!(m.int(1), Some(-1));
        for bad in [
            &[0x12, 5, b'a'][..], // length past the end
            &[0x0b],              // wire type 3 (groups)
            &[0x08, 0x80],        // varint cut
            &[0x00, 1],           // field 0
            &[0x19, 1, 2],        // fixed64 cut
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1,
            ], // varint > 10 bytes
        ] {
            assert!(fields(bad).is_none(), "{bad:?}");
        }
        assert_eq!(fields(&[]).unwrap(), vec![]);
    }
}
