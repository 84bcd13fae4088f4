//! Declared sizes in untrusted yrs (lib0 v1) encodings, checked before yrs decodes them.
//!
//! yrs's decoders reserve room for a collection as soon as they read its declared number of
//! entries, before they read the entries: a state vector or an `Any` map of 2^28 entries
//! takes a few bytes to declare and several GiB to reserve (hash maps touch their control
//! bytes, so hundreds of MB become resident). And `Any` values nest without limit, so a
//! deeply nested one overflows the decoder's stack, which no `catch_unwind` survives.
//!
//! The walks here read an encoding the way yrs does and refuse any declared count larger
//! than the bytes left to hold its entries (each entry takes at least one byte, most more),
//! and `Any` values nested deeper than [`MAX_DEPTH`]. So whatever yrs reserves afterwards is
//! bounded by a small multiple of the input's size. A walk refuses nothing else: input it
//! cannot follow (truncated, an unknown tag) is passed on, for yrs to refuse with its own
//! error. Every count in an encoding yrs accepts fits in the bytes that follow it, so no
//! input yrs accepts is refused here (a property the tests check on generated updates).

/// Deepest nesting of `Any` arrays and maps accepted (serde_json's default limit is 128; a
/// REST body can never get close).
pub(crate) const MAX_DEPTH: usize = 512;

/// Checks a v1 update (the payload of SYNC step 2 or update).
pub(crate) fn check_update(bytes: &[u8]) -> Result<(), String> {
    finish(Walk::new(bytes).update())
}

/// Checks a v1 state vector (the payload of SYNC step 1).
pub(crate) fn check_state_vector(bytes: &[u8]) -> Result<(), String> {
    finish(Walk::new(bytes).state_vector())
}

/// Checks an awareness update (the payload of an AWARENESS message).
pub(crate) fn check_awareness(bytes: &[u8]) -> Result<(), String> {
    finish(Walk::new(bytes).awareness())
}

fn finish(walk: Result<(), Stop>) -> Result<(), String> {
    match walk {
        Ok(()) | Err(Stop::Unreadable) => Ok(()),
        Err(Stop::Refused(reason)) => Err(reason),
    }
}

/// Why a walk stopped early.
enum Stop {
    /// A count or a nesting over the limits: the input is refused.
    Refused(String),
    /// The walk cannot go on (yrs will refuse the input, or the walk does not know the tag).
    Unreadable,
}

type Step<T = ()> = Result<T, Stop>;

const BLOCK_GC: u8 = 0;
const BLOCK_SKIP: u8 = 10;
const HAS_ORIGIN: u8 = 0b1000_0000;
const HAS_RIGHT_ORIGIN: u8 = 0b0100_0000;
const HAS_PARENT_SUB: u8 = 0b0010_0000;
const TYPE_REFS_XML_ELEMENT: u8 = 3;

struct Walk<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Walk<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Walk { buf, pos: 0 }
    }

    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn u8(&mut self) -> Step<u8> {
        let byte = *self.buf.get(self.pos).ok_or(Stop::Unreadable)?;
        self.pos += 1;
        Ok(byte)
    }

    fn skip(&mut self, n: u64) -> Step {
        if n > self.left() as u64 {
            return Err(Stop::Unreadable);
        }
        self.pos += n as usize;
        Ok(())
    }

    /// An unsigned varint, read as yrs reads `u64` (and, truncated, `u32`/`usize`): 7 bits
    /// a byte with wrapping shifts, at most 11 bytes.
    fn var(&mut self) -> Step<u64> {
        let mut num = 0u64;
        let mut shift = 0u32;
        loop {
            let byte = self.u8()?;
            num |= u64::wrapping_shl(u64::from(byte & 0x7f), shift);
            shift += 7;
            if byte < 0x80 {
                return Ok(num);
            }
            if shift > 70 {
                return Err(Stop::Unreadable);
            }
        }
    }

    /// A `u32` varint as yrs reads it (shifts wrap at 32 bits).
    fn var_u32(&mut self) -> Step<u32> {
        let mut num = 0u32;
        let mut shift = 0u32;
        loop {
            let byte = self.u8()?;
            num |= u32::wrapping_shl(u32::from(byte & 0x7f), shift);
            shift += 7;
            if byte < 0x80 {
                return Ok(num);
            }
            if shift > 70 {
                return Err(Stop::Unreadable);
            }
        }
    }

    /// Skips a varint, signed or not (both end at the first byte below 0x80).
    fn skip_var(&mut self) -> Step {
        for _ in 0..11 {
            if self.u8()? < 0x80 {
                return Ok(());
            }
        }
        Err(Stop::Unreadable)
    }

    /// A length-prefixed buffer or string.
    fn skip_buf(&mut self) -> Step {
        let len = self.var_u32()?;
        self.skip(u64::from(len))
    }

    /// Checks a declared count of entries that take at least `min_bytes` each.
    fn count(&self, what: &str, declared: u64, min_bytes: u64) -> Step<u64> {
        let room = self.left() as u64 / min_bytes;
        if declared > room {
            return Err(Stop::Refused(format!(
                "declares {declared} {what} but only {} bytes follow",
                self.left()
            )));
        }
        Ok(declared)
    }

    fn state_vector(&mut self) -> Step {
        let declared = u64::from(self.var_u32()?);
        let entries = self.count("state vector entries", declared, 2)?;
        for _ in 0..entries {
            self.skip_var()?;
            self.skip_var()?;
        }
        Ok(())
    }

    fn awareness(&mut self) -> Step {
        let declared = self.var()?;
        let entries = self.count("awareness states", declared, 3)?;
        for _ in 0..entries {
            self.skip_var()?;
            self.skip_var()?;
            self.skip_buf()?;
        }
        Ok(())
    }

    fn update(&mut self) -> Step {
        let declared = u64::from(self.var_u32()?);
        // Each client: its number of blocks, its id and its first clock.
        let clients = self.count("clients", declared, 3)?;
        for _ in 0..clients {
            let declared = u64::from(self.var_u32()?);
            self.skip_var()?;
            self.skip_var()?;
            let blocks = self.count("blocks", declared, 1)?;
            for _ in 0..blocks {
                self.block()?;
            }
        }
        // The delete set: yrs grows it as it reads, reserving nothing up front; walked only so
        // that a walk's end can be checked.
        let clients = self.var_u32()?;
        for _ in 0..clients {
            self.skip_var()?;
            let ranges = self.var_u32()?;
            for _ in 0..ranges {
                self.skip_var()?;
                self.skip_var()?;
            }
        }
        Ok(())
    }

    fn block(&mut self) -> Step {
        let info = self.u8()?;
        if info == BLOCK_SKIP || info == BLOCK_GC {
            return self.skip_var();
        }
        if info & HAS_ORIGIN != 0 {
            self.skip_var()?;
            self.skip_var()?;
        }
        if info & HAS_RIGHT_ORIGIN != 0 {
            self.skip_var()?;
            self.skip_var()?;
        }
        if info & (HAS_ORIGIN | HAS_RIGHT_ORIGIN) == 0 {
            // The parent: a root's name (parent info 1) or the id of the item holding it.
            if self.var_u32()? == 1 {
                self.skip_buf()?;
            } else {
                self.skip_var()?;
                self.skip_var()?;
            }
            if info & HAS_PARENT_SUB != 0 {
                self.skip_buf()?;
            }
        }
        self.content(info & 0b1111)
    }

    fn content(&mut self, kind: u8) -> Step {
        match kind {
            // Deleted: a length.
            1 => self.skip_var(),
            // JSON: yrs reads the declared count plus one strings.
            2 => {
                let declared = u64::from(self.var_u32()?);
                let strings = self.count("JSON values", declared, 1)?;
                for _ in 0..=strings {
                    self.skip_buf()?;
                }
                Ok(())
            }
            // Binary, String, Embed.
            3..=5 => self.skip_buf(),
            // Format: a key and a JSON value.
            6 => {
                self.skip_buf()?;
                self.skip_buf()
            }
            // Type: its type ref (one byte), and an XML element's name.
            7 => {
                if self.u8()? == TYPE_REFS_XML_ELEMENT {
                    self.skip_buf()?;
                }
                Ok(())
            }
            // Any: a count of values.
            8 => {
                let declared = self.var()?;
                let values = self.count("values", declared, 1)?;
                for _ in 0..values {
                    self.any(1)?;
                }
                Ok(())
            }
            // Doc: a guid and its options (an `Any`).
            9 => {
                self.skip_buf()?;
                self.any(1)
            }
            _ => Err(Stop::Unreadable),
        }
    }

    /// A lib0 `Any` nested `depth` levels deep.
    fn any(&mut self, depth: usize) -> Step {
        if depth > MAX_DEPTH {
            return Err(Stop::Refused(format!(
                "nests values more than {MAX_DEPTH} levels deep"
            )));
        }
        match self.u8()? {
            // undefined, null, false, true
            127 | 126 | 121 | 120 => Ok(()),
            // integer
            125 => self.skip_var(),
            // float32, float64, bigint
            124 => self.skip(4),
            123 | 122 => self.skip(8),
            // string, buffer
            119 | 116 => self.skip_buf(),
            // map: each entry is a key and a value
            118 => {
                let declared = self.var()?;
                let entries = self.count("map entries", declared, 2)?;
                for _ in 0..entries {
                    self.skip_buf()?;
                    self.any(depth + 1)?;
                }
                Ok(())
            }
            // array
            117 => {
                let declared = self.var()?;
                let values = self.count("array values", declared, 1)?;
                for _ in 0..values {
                    self.any(depth + 1)?;
                }
                Ok(())
            }
            _ => Err(Stop::Unreadable),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::decoder::Decode;
    use yrs::updates::encoder::Encode;
    use yrs::{
        Any, Array, Doc, GetString, Map, ReadTxn, StateVector, Text, Transact, WriteTxn, Xml,
        XmlFragment,
    };

    fn var(mut n: u64, out: &mut Vec<u8>) {
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }

    #[test]
    fn counts_larger_than_the_input_are_refused() {
        // A state vector declaring 2^28 entries, and none.
        let err = check_state_vector(&[0x80, 0x80, 0x80, 0x80, 0x01]).unwrap_err();
        assert!(err.contains("268435456 state vector entries"), "{err}");
        // One entry declared, one present: fine.
        assert!(check_state_vector(&[1, 5, 3]).is_ok());
        // Awareness: 1,000 states in 10 bytes.
        let mut bytes = Vec::new();
        var(1000, &mut bytes);
        bytes.extend([0; 8]);
        assert!(check_awareness(&bytes).is_err());
        // An update of 2^30 clients.
        let mut bytes = Vec::new();
        var(1 << 30, &mut bytes);
        assert!(check_update(&bytes).is_err());
    }

    /// An update with one item of `Any` content, written by hand.
    fn any_update(any: &[u8]) -> Vec<u8> {
        // 1 client, 1 block, client 7, clock 0; item: info 8 (Any), parent a root "a";
        // content: one value.
        let mut bytes = vec![1, 1, 7, 0, 8, 1, 1, b'a', 1];
        bytes.extend_from_slice(any);
        bytes.extend([0]); // empty delete set
        bytes
    }

    #[test]
    fn nested_counts_and_depth_are_refused() {
        // A value that is a map declaring 2^28 entries.
        let mut map = vec![118];
        var(1 << 28, &mut map);
        let err = check_update(&any_update(&map)).unwrap_err();
        assert!(err.contains("map entries"), "{err}");
        // An array nested 100,000 deep: yrs would overflow its stack decoding it.
        let mut deep = [117, 1].repeat(100_000);
        deep.push(126);
        let err = check_update(&any_update(&deep)).unwrap_err();
        assert!(err.contains("levels deep"), "{err}");
        // The same at the limit is fine, and yrs reads it.
        let mut ok = [117, 1].repeat(MAX_DEPTH - 1);
        ok.push(126);
        let update = any_update(&ok);
        assert!(check_update(&update).is_ok());
        assert!(yrs::Update::decode_v1(&update).is_ok());
    }

    #[test]
    fn what_the_walk_cannot_read_is_left_to_yrs() {
        for bytes in [&[][..], &[1, 1, 7, 0, 99], &[200, 200]] {
            assert!(check_update(bytes).is_ok(), "{bytes:?}");
        }
    }

    #[test]
    fn real_updates_of_every_content_kind_pass() {
        let doc = Doc::new();
        let mut txn = doc.transact_mut();
        let text = txn.get_or_insert_text("text");
        text.insert(&mut txn, 0, "héllo wörld");
        text.insert_embed(&mut txn, 0, Any::from("embedded"));
        text.format(
            &mut txn,
            2,
            3,
            [("bold".into(), Any::Bool(true))].into_iter().collect(),
        );
        text.remove_range(&mut txn, 7, 2);
        let map = txn.get_or_insert_map("map");
        map.insert(&mut txn, "n", Any::from(1.5));
        map.insert(&mut txn, "i", Any::from(-1i64 << 40));
        map.insert(&mut txn, "big", Any::from(i64::MIN + 1));
        map.insert(&mut txn, "f32", Any::from(0.5f32));
        map.insert(&mut txn, "b", Any::Buffer(vec![1, 2, 3].into()));
        map.insert(&mut txn, "nested", yrs::MapPrelim::default());
        map.insert(
            &mut txn,
            "deep",
            Any::from(vec![Any::from(std::collections::HashMap::from([(
                "k".to_string(),
                Any::from(vec![Any::Null, Any::Undefined, Any::from(false)]),
            )]))]),
        );
        map.insert(&mut txn, "doc", Doc::new());
        let array = txn.get_or_insert_array("array");
        for i in 0..50 {
            array.push_back(&mut txn, Any::from(i as f64));
        }
        array.remove_range(&mut txn, 10, 20);
        let xml = txn.get_or_insert_xml_fragment("xml");
        let el = xml.push_back(&mut txn, yrs::XmlElementPrelim::empty("p"));
        el.insert_attribute(&mut txn, "class", "x");
        drop(txn);
        let update = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        // The walk reads it to its end, as yrs does.
        let mut walk = Walk::new(&update);
        assert!(walk.update().is_ok());
        assert_eq!(walk.pos, update.len());
        assert!(yrs::Update::decode_v1(&update).is_ok());
        check_update(&update).unwrap();
        check_state_vector(&doc.transact().state_vector().encode_v1()).unwrap();
        assert!(text.get_string(&doc.transact()).contains('h'));
    }
}
