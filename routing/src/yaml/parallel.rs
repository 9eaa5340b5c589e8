//! Parsing the documents of a load on several threads.
//!
//! The YAML parser is most of a large load's time (8,000 ServiceEntries in one file: about 70 %
//! of 0.6 s of CPU). Documents are independent until [`super::assemble`], so a large input is cut
//! into contiguous runs of documents, one per available core, and the results are concatenated
//! in document order: the outcome is the one a single thread would produce.

use super::diag::Diag;
use super::docs::RawDoc;
use super::{parse_document, LoadOptions, Parsed};
use crate::error::DocRef;

/// Below this many bytes of YAML the documents are parsed on the calling thread.
const PARALLEL_PARSE_MIN_BYTES: usize = 256 * 1024;

/// Parse every document, in order. Large inputs are cut into contiguous runs of documents of
/// about equal size, one per available core, parsed on scoped threads, and their results
/// concatenated in document order: every list in [`Parsed`] and [`Diag`] is exactly what one
/// thread parsing the documents in order would build (each document only appends to them).
pub(super) fn parse_documents(
    docs: &[(&str, RawDoc<'_>)],
    options: &LoadOptions,
    diag: &mut Diag,
) -> Parsed {
    let bytes: usize = docs.iter().map(|(_, d)| d.text.len()).sum();
    let threads = if bytes < PARALLEL_PARSE_MIN_BYTES {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    };
    parse_documents_on(docs, bytes, threads, options, diag)
}

/// [`parse_documents`] on at most `threads` threads.
fn parse_documents_on(
    docs: &[(&str, RawDoc<'_>)],
    bytes: usize,
    threads: usize,
    options: &LoadOptions,
    diag: &mut Diag,
) -> Parsed {
    let threads = threads.min(docs.len());
    let parse_run = |run: &[(&str, RawDoc<'_>)], diag: &mut Diag| {
        let mut parsed = Parsed::default();
        for (file, doc) in run {
            let at = DocRef {
                file: (*file).to_string(),
                doc: Some(doc.index),
                ..DocRef::default()
            };
            parse_document(at, doc, options, &mut parsed, diag);
        }
        parsed
    };
    if threads <= 1 {
        return parse_run(docs, diag);
    }
    let runs = runs_of_equal_bytes(docs, bytes, threads);
    let results: Vec<(Parsed, Diag)> = std::thread::scope(|scope| {
        let handles: Vec<_> = runs[1..]
            .iter()
            .map(|run| {
                scope.spawn(move || {
                    let mut d = Diag::default();
                    let p = parse_run(run, &mut d);
                    (p, d)
                })
            })
            .collect();
        // The first run on this thread, while the others parse theirs.
        let mut first = Diag::default();
        let mut results = vec![(parse_run(runs[0], &mut first), first)];
        for h in handles {
            match h.join() {
                Ok(r) => results.push(r),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        results
    });
    let mut parsed = Parsed::default();
    for (p, d) in results {
        parsed.append(p);
        diag.errors.extend(d.errors);
        diag.warnings.extend(d.warnings);
    }
    parsed
}

/// `docs` cut into at most `n` contiguous, non-empty runs of about `total / n` bytes each.
fn runs_of_equal_bytes<'d, 'a>(
    docs: &'d [(&'a str, RawDoc<'a>)],
    total: usize,
    n: usize,
) -> Vec<&'d [(&'a str, RawDoc<'a>)]> {
    let target = total.div_ceil(n).max(1);
    let mut runs = Vec::with_capacity(n);
    let (mut start, mut acc) = (0, 0);
    for (i, (_, d)) in docs.iter().enumerate() {
        acc += d.text.len();
        if acc >= target && runs.len() + 1 < n {
            runs.push(&docs[start..=i]);
            (start, acc) = (i + 1, 0);
        }
    }
    if start < docs.len() {
        runs.push(&docs[start..]);
    }
    runs
}

impl Parsed {
    /// `other`'s items after this one's, in order.
    /// (Destructured, so that a new field cannot be forgotten here.)
    fn append(&mut self, other: Parsed) {
        let Parsed {
            service_entries,
            workload_entries,
            virtual_services,
            destination_rules,
            http_routes,
            authorization_policies,
            telemetries,
        } = other;
        self.telemetries.extend(telemetries);
        self.service_entries.extend(service_entries);
        self.workload_entries.extend(workload_entries);
        self.virtual_services.extend(virtual_services);
        self.destination_rules.extend(destination_rules);
        self.http_routes.extend(http_routes);
        self.authorization_policies.extend(authorization_policies);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::docs::split_documents;

    /// Files mixing kinds, valid documents, errors (bad YAML, unknown fields, a missing name)
    /// and warnings (a kind that is skipped, an unsupported field).
    fn files() -> Vec<(String, String)> {
        let mut files = Vec::new();
        for f in 0..3 {
            let mut text = String::new();
            for i in 0..40 {
                let n = f * 100 + i;
                text.push_str(&match i % 8 {
                    0 => format!("---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: se-{n}}}\nspec:\n  hosts: [se-{n}.example]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints: [{{address: 10.0.{f}.{i}}}]\n"),
                    1 => format!("---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs-{n}}}\nspec:\n  hosts: [se-{n}.example]\n  http:\n  - route:\n    - destination: {{host: se-{n}.example}}\n"),
                    2 => format!("---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: bad-{n}}}\nspec:\n  hosts: [x]\n  bogusField{n}: 1\n"),
                    3 => "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nspec: {hosts: [y]}\n".to_string(),
                    4 => format!("---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm-{n}}}\n"),
                    5 => format!("---\nkind: [unclosed {n}\n"),
                    6 => format!("---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: dr-{n}}}\nspec:\n  host: se-{n}.example\n  trafficPolicy: {{loadBalancer: {{simple: ROUND_ROBIN}}}}\n"),
                    _ => format!("---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: se-{n}}}\nspec:\n  hosts: [dup-{n}.example]\n  exportTo: ['.']\n  ports: [{{number: 81, name: tcp, protocol: TCP}}]\n  resolution: NONE\n"),
                });
            }
            files.push((format!("f{f}.yaml"), text));
        }
        files
    }

    fn parse_on(files: &[(String, String)], threads: usize) -> (String, String, String) {
        let docs: Vec<(&str, RawDoc<'_>)> = files
            .iter()
            .flat_map(|(f, t)| split_documents(t).into_iter().map(move |d| (f.as_str(), d)))
            .collect();
        let bytes = docs.iter().map(|(_, d)| d.text.len()).sum();
        let mut diag = Diag::default();
        let parsed = parse_documents_on(
            &docs,
            bytes,
            threads,
            &LoadOptions::new("cluster.local"),
            &mut diag,
        );
        (
            format!("{parsed:?}"),
            format!("{:?}", diag.errors),
            format!("{:?}", diag.warnings),
        )
    }

    /// Parsed on several threads, the documents give the same items, errors and warnings in the
    /// same order as on one thread.
    #[test]
    fn several_threads_give_what_one_thread_gives() {
        let files = files();
        let one = parse_on(&files, 1);
        assert!(
            one.0.contains("se-0.example") && one.0.contains("dr-206"),
            "{}",
            one.0
        );
        assert!(one.1.contains("bogusField2") && one.1.contains("bogusField202"));
        assert!(
            one.2.contains("ConfigMap") && one.2.contains("spec.exportTo"),
            "{}",
            one.2
        );
        for threads in [2, 3, 7, 500] {
            let many = parse_on(&files, threads);
            assert!(one.0 == many.0, "items differ on {threads} threads");
            assert_eq!(one.1, many.1, "errors differ on {threads} threads");
            assert_eq!(one.2, many.2, "warnings differ on {threads} threads");
        }
    }

    #[test]
    fn runs_are_contiguous_non_empty_and_cover_every_document() {
        let files = files();
        let docs: Vec<(&str, RawDoc<'_>)> = files
            .iter()
            .flat_map(|(f, t)| split_documents(t).into_iter().map(move |d| (f.as_str(), d)))
            .collect();
        let bytes = docs.iter().map(|(_, d)| d.text.len()).sum();
        for n in [1, 2, 3, 8, docs.len(), docs.len() + 5] {
            let runs = runs_of_equal_bytes(&docs, bytes, n);
            assert!(
                !runs.is_empty() && runs.len() <= n,
                "{n}: {} runs",
                runs.len()
            );
            assert!(runs.iter().all(|r| !r.is_empty()));
            let order: Vec<usize> = runs
                .iter()
                .flat_map(|r| r.iter())
                .map(|(_, d)| d.index)
                .collect();
            let all: Vec<usize> = docs.iter().map(|(_, d)| d.index).collect();
            assert_eq!(order, all, "{n} runs");
            if n <= 3 {
                assert_eq!(runs.len(), n, "{n} runs of about equal size");
                let largest = runs
                    .iter()
                    .map(|r| r.iter().map(|(_, d)| d.text.len()).sum::<usize>())
                    .max();
                assert!(
                    largest.unwrap_or(0) <= bytes / n + 400,
                    "{n} runs: {largest:?} of {bytes}"
                );
            }
        }
    }
}
