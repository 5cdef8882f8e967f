//! Maps each setting's JSON pointer (`/connectors/2/batch/max_records`) to the line where it
//! stands in the YAML text, so that errors can say where to look.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

enum Frame {
    Map {
        path: String,
        key: Option<String>,
        expecting_key: bool,
    },
    Seq {
        path: String,
        index: usize,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
}

fn escape(seg: &str) -> String {
    seg.replace('~', "~0").replace('/', "~1")
}

impl Builder {
    /// Path of the value about to start in the current frame, recording its line.
    fn value_path(&mut self, line: usize) -> String {
        match self.stack.last() {
            None => String::new(),
            Some(Frame::Map { path, key, .. }) => {
                format!("{path}/{}", escape(key.as_deref().unwrap_or("?")))
            }
            Some(Frame::Seq { path, index }) => {
                let p = format!("{path}/{index}");
                self.lines.entry(p.clone()).or_insert(line);
                p
            }
        }
    }

    fn advance(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { expecting_key, .. }) => *expecting_key = true,
            Some(Frame::Seq { index, .. }) => *index += 1,
            None => {}
        }
    }

    fn scalar(&mut self, value: String, line: usize) {
        if let Some(Frame::Map {
            path,
            key,
            expecting_key,
        }) = self.stack.last_mut()
        {
            if *expecting_key {
                self.lines
                    .entry(format!("{path}/{}", escape(&value)))
                    .or_insert(line);
                *key = Some(value);
                *expecting_key = false;
                return;
            }
        }
        self.value_path(line);
        self.advance();
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(v, ..) => self.scalar(v, line),
            Event::Alias(_) => self.scalar(String::new(), line),
            Event::MappingStart(..) => {
                let path = self.value_path(line);
                self.stack.push(Frame::Map {
                    path,
                    key: None,
                    expecting_key: true,
                });
            }
            Event::SequenceStart(..) => {
                let path = self.value_path(line);
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.advance();
            }
            _ => {}
        }
    }
}

/// Line numbers (1-based) by JSON pointer.
#[derive(Debug, Default, Clone)]
pub struct LineIndex(HashMap<String, usize>);

impl LineIndex {
    /// Indexes `text`. A text the YAML parser rejects gives an empty index (the parse error is
    /// reported elsewhere).
    pub fn build(text: &str) -> Self {
        let mut b = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut b, false).is_err() {
            return Self::default();
        }
        Self(b.lines)
    }

    /// The line of `pointer`, or of its nearest ancestor that has one.
    pub fn line_of(&self, pointer: &str) -> Option<usize> {
        let mut p = pointer;
        loop {
            if let Some(l) = self.0.get(p) {
                return Some(*l);
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
kafka:
  brokers: x
connectors:
  - name: a
    type: t
    batch:
      max_records: 5
  - name: b
    type: u
    list: [1, 2]
    nested:
      - k: v
";

    #[test]
    fn finds_keys_and_items() {
        let idx = LineIndex::build(DOC);
        assert_eq!(idx.line_of("/kafka/brokers"), Some(2));
        assert_eq!(idx.line_of("/connectors/0"), Some(4));
        assert_eq!(idx.line_of("/connectors/0/batch/max_records"), Some(7));
        assert_eq!(idx.line_of("/connectors/1/name"), Some(8));
        assert_eq!(idx.line_of("/connectors/1/list/1"), Some(10));
        assert_eq!(idx.line_of("/connectors/1/nested/0/k"), Some(12));
    }

    #[test]
    fn falls_back_to_the_nearest_ancestor() {
        let idx = LineIndex::build(DOC);
        assert_eq!(idx.line_of("/connectors/0/batch/missing"), Some(6));
        assert_eq!(idx.line_of("/nothing"), None);
    }
}
