//! Action errors and warnings, one table each.

use super::*;

#[test]
fn action_errors() {
    let route = true;
    // (http entry fields, with a route?, expected error after AT)
    let cases: &[(&str, bool, &str)] = &[
        // exclusivity
        ("redirect: {uri: /x}", route, "spec.http[0]: redirect and route are exclusive"),
        ("directResponse: {status: 503}", route, "spec.http[0]: directResponse and route are exclusive"),
        ("{redirect: {uri: /x}, directResponse: {status: 503}}", !route, "spec.http[0]: redirect and directResponse are exclusive"),
        ("{redirect: {uri: /x}, fault: {abort: {httpStatus: 500}}}", !route, "spec.http[0]: fault and redirect are exclusive"),
        ("{directResponse: {status: 503}, rewrite: {uri: /x}}", !route, "spec.http[0]: rewrite and directResponse are exclusive"),
        ("{mirror: {host: ratings}, mirrors: [{destination: {host: ratings}}]}", route, "spec.http[0]: mirror and mirrors are exclusive"),
        ("name: nothing", !route, "spec.http[0].route: at least one destination is required"),
        // redirect
        ("redirect: {uri: /a, prefixRewrite: /b}", !route, "spec.http[0].redirect: redirect may only specify one of uri or prefixRewrite"),
        ("redirect: {redirectCode: 302}", !route, "spec.http[0].redirect: redirect must specify uri, prefixRewrite, authority, scheme, port or derivePort"),
        ("redirect: {uri: /x, redirectCode: 404}", !route, "spec.http[0].redirect.redirectCode: 404 is not a valid redirect code, must be 3xx"),
        ("redirect: {uri: /x, redirectCode: 300}", !route, "spec.http[0].redirect.redirectCode: redirect code 300 is not supported"),
        ("redirect: {scheme: ftp}", !route, "spec.http[0].redirect.scheme: invalid redirect scheme \"ftp\", must be \"http\" or \"https\""),
        ("redirect: {port: 70000}", !route, "spec.http[0].redirect.port: port number 70000 must be in the range 1..65535"),
        ("redirect: {port: 80, derivePort: FROM_REQUEST_PORT}", !route, "spec.http[0].redirect: redirect may only specify one of port or derivePort"),
        ("redirect: {derivePort: SOMEWHERE}", !route, "spec.http[0].redirect.derivePort: unknown derivePort \"SOMEWHERE\""),
        ("{match: [{uri: {exact: /a}}], redirect: {prefixRewrite: /b}}", !route, "spec.http[0].redirect.prefixRewrite: requires every match block's uri to be a prefix match"),
        // direct response
        ("directResponse: {status: 100}", !route, "spec.http[0].directResponse.status: HTTP status 100 is not in range 200..=599"),
        ("directResponse: {status: 600}", !route, "spec.http[0].directResponse.status: HTTP status 600 is not in range 200..=599"),
        ("directResponse: {body: {string: x}}", !route, "spec.http[0].directResponse.status: missing required field"),
        ("directResponse: {status: 200, body: {string: a, bytes: YQ==}}", !route, "spec.http[0].directResponse.body: only one of string or bytes may be set"),
        ("directResponse: {status: 200, body: {bytes: 'not base64!'}}", !route, "spec.http[0].directResponse.body.bytes: invalid base64: invalid base64 character ' ' at 3"),
        // rewrite
        ("rewrite: {uri: /a, uriRegexRewrite: {match: a, rewrite: b}}", route, "spec.http[0].rewrite: rewrite may only contain one of uri or uriRegexRewrite"),
        ("rewrite: {}", route, "spec.http[0].rewrite: rewrite must specify at least one of uri, uriRegexRewrite or authority"),
        ("rewrite: {uriRegexRewrite: {match: '^/a'}}", route, "spec.http[0].rewrite.uriRegexRewrite: uriRegexRewrite requires both match and rewrite"),
        ("rewrite: {uriRegexRewrite: {match: '(', rewrite: /b}}", route, "spec.http[0].rewrite.uriRegexRewrite.match: invalid regex \"(\": unclosed group"),
        ("rewrite: {uriRegexRewrite: {match: '^/(a)', rewrite: '/\\2'}}", route, "spec.http[0].rewrite.uriRegexRewrite.rewrite: rewrite \"/\\\\2\" uses \\2 but the pattern has 1 capture group"),
        // headers
        ("headers: {request: {set: {':path': /x}}}", route, "spec.http[0].headers.request.set.:path: invalid header \":path\": header cannot have \":\" prefix"),
        ("headers: {response: {set: {host: x}}}", route, "spec.http[0].headers.response.set.host: invalid header \"host\": cannot set Host header"),
        ("headers: {request: {remove: [Host]}}", route, "spec.http[0].headers.request.remove[0]: invalid header \"Host\": cannot set Host header"),
        ("headers: {request: {remove: ['']}}", route, "spec.http[0].headers.request.remove[0]: header name cannot be empty"),
        ("headers: {request: {set: {'bad name': x}}}", route, "spec.http[0].headers.request.set.bad name: header name bad name is not a valid header name"),
        ("headers: {request: {set: {x-a: \"a\\nb\"}}}", route, "spec.http[0].headers.request.set.x-a: header value configuration \"a\\nb\" is invalid"),
        ("headers: {request: {set: {x-a: '100%'}}}", route, "spec.http[0].headers.request.set.x-a: header value configuration \"100%\": invalid header configuration. Un-escaped %"),
        ("headers: {request: {set: {x-a: 1}}}", route, "spec.http[0].headers.request.set.x-a: header value must be a string, got 1"),
        ("headers: {request: {set: {host: a}, add: {':authority': b}}}", route, "spec.http[0].headers.request: authority header cannot be set multiple times"),
        ("{rewrite: {authority: a}, headers: {request: {set: {host: b}}}}", route, "spec.http[0]: authority header cannot be set multiple times: have \"a\" (rewrite.authority)"),
        // timeout
        ("timeout: 5", route, "spec.http[0].timeout: invalid duration \"5\": missing unit"),
        ("timeout: -1s", route, "spec.http[0].timeout: invalid duration \"-1s\": must not be negative"),
        ("timeout: 500us", route, "spec.http[0].timeout: must be ≥ 1ms, got \"500us\""),
        ("timeout: 1.0005s", route, "spec.http[0].timeout: only millisecond precision is supported"),
        // retries
        ("retries: {attempts: 3, perTryTimeout: 5}", route, "spec.http[0].retries.perTryTimeout: invalid duration \"5\""),
        ("retries: {attempts: -1}", route, "spec.http[0].retries.attempts: attempts cannot be negative, got -1"),
        ("retries: {attempts: 0, retryOn: 5xx}", route, "spec.http[0].retries: http retry policy configured when attempts are set to 0 (disabled)"),
        ("retries: {perTryTimeout: 1s}", route, "spec.http[0].retries: http retry policy configured when attempts are set to 0 (disabled)"),
        ("retries: {attempts: 2, retryOn: '5xx,bogus'}", route, "spec.http[0].retries.retryOn: \"bogus\" is not a valid retryOn policy"),
        ("retries: {attempts: 2, retryOn: '5xx, reset'}", route, "spec.http[0].retries.retryOn: \" reset\" is not a valid retryOn policy"),
        ("retries: {attempts: 2, retryOn: '599'}", route, "spec.http[0].retries.retryOn: \"599\" is not a valid retryOn policy"),
        ("retries: {attempts: 2, retryOn: '5xx,'}", route, "spec.http[0].retries.retryOn: \"\" is not a valid retryOn policy"),
        ("retries: {attempts: 2, backoff: 0s}", route, "spec.http[0].retries.backoff: must be ≥ 1ms"),
        ("retries: {attempts: 2, retryRemoteLocalities: maybe}", route, "spec.http[0].retries.retryRemoteLocalities: must be true or false"),
        // fault
        ("fault: {}", route, "spec.http[0].fault: HTTP fault injection must have an abort and/or a delay"),
        ("fault: {abort: {percentage: {value: 10}}}", route, "spec.http[0].fault.abort: needs httpStatus or grpcStatus"),
        ("fault: {abort: {httpStatus: 600}}", route, "spec.http[0].fault.abort.httpStatus: HTTP status 600 is not in range 200..=599"),
        ("fault: {abort: {grpcStatus: '14'}}", route, "spec.http[0].fault.abort.grpcStatus: gRPC status \"14\" is not supported"),
        ("fault: {abort: {http2Error: REFUSED}}", route, "spec.http[0].fault.abort.http2Error: HTTP/2 abort fault injection not supported yet"),
        ("fault: {abort: {httpStatus: 500, grpcStatus: INTERNAL}}", route, "spec.http[0].fault.abort: only one of httpStatus, grpcStatus or http2Error may be set"),
        ("fault: {abort: {httpStatus: 500, percentage: {value: 150}}}", route, "spec.http[0].fault.abort.percentage.value: must be a percentage in 0 or 0.0001..=100, got 150"),
        ("fault: {abort: {httpStatus: 500, percentage: {value: 0.00001}}}", route, "spec.http[0].fault.abort.percentage.value: must be a percentage in 0 or 0.0001..=100"),
        ("fault: {delay: {percentage: {value: 10}}}", route, "spec.http[0].fault.delay: needs fixedDelay"),
        ("fault: {delay: {fixedDelay: 0s, percentage: {value: 10}}}", route, "spec.http[0].fault.delay.fixedDelay: must be ≥ 1ms"),
        ("fault: {delay: {exponentialDelay: 1s}}", route, "spec.http[0].fault.delay.exponentialDelay: exponentialDelay not supported yet"),
        ("fault: {delay: {fixedDelay: 1s, percent: 101}}", route, "spec.http[0].fault.delay.percent: must be ≤ 100, got 101"),
        // mirrors
        ("{mirror: {host: ratings}, mirrorPercentage: {value: 101}}", route, "spec.http[0].mirrorPercentage.value: must be a percentage in 0..=100, got 101"),
        ("{mirror: {host: ratings}, mirrorPercent: 101}", route, "spec.http[0].mirrorPercent: must be ≤ 100, got 101"),
        ("mirrors: [{percentage: {value: 5}}]", route, "spec.http[0].mirrors[0].destination: missing required field"),
        ("mirrors: [{destination: {host: ratings}, percentage: {value: -1}}]", route, "spec.http[0].mirrors[0].percentage.value: must be a percentage in 0..=100, got -1"),
        ("mirror: {host: nowhere}", route, "spec.http[0].mirror.host: host nowhere.default.svc.cluster.local is not a known service"),
        ("mirror: {host: ratings, subset: v9}", route, "spec.http[0].mirror.subset: unknown subset v9 for host ratings.default.svc.cluster.local"),
        ("mirrors: [{destination: {host: ratings, port: {number: 1}}}]", route, "spec.http[0].mirrors[0].destination.port.number: port 1 is not a port of ratings.default.svc.cluster.local"),
        ("mirror: {host: '*'}", route, "spec.http[0].mirror.host: invalid destination host *"),
        // cors
        ("corsPolicy: {allowOrigins: [{}]}", route, "spec.http[0].corsPolicy.allowOrigins[0]: '' is not a valid match type for CORS allow origins"),
        ("corsPolicy: {allowOrigins: [{exact: ''}]}", route, "spec.http[0].corsPolicy.allowOrigins[0]: '' is not a valid match type"),
        ("corsPolicy: {allowOrigins: [{regex: '('}]}", route, "spec.http[0].corsPolicy.allowOrigins[0].regex: invalid regex \"(\""),
        ("corsPolicy: {allowMethods: [FETCH]}", route, "spec.http[0].corsPolicy.allowMethods[0]: \"FETCH\" is not a supported HTTP method"),
        ("corsPolicy: {allowHeaders: ['bad header']}", route, "spec.http[0].corsPolicy.allowHeaders[0]: header name bad header is not a valid header name"),
        ("corsPolicy: {exposeHeaders: ['']}", route, "spec.http[0].corsPolicy.exposeHeaders[0]: header name cannot be empty"),
        ("corsPolicy: {maxAge: 1500ms}", route, "spec.http[0].corsPolicy.maxAge: max_age duration is accurate only to seconds precision"),
        ("corsPolicy: {unmatchedPreflights: DROP}", route, "spec.http[0].corsPolicy.unmatchedPreflights: unknown value \"DROP\" (use FORWARD or IGNORE)"),
        ("corsPolicy: {allowCredentials: 'yes'}", route, "spec.http[0].corsPolicy.allowCredentials: must be true or false"),
        // destinations' headers are checked too
        ("name: d", false, ""),
    ];
    for (fields, with_route, want) in cases {
        if want.is_empty() {
            continue;
        }
        let body = item(fields, *with_route);
        let e = error(&vs(&body));
        let want = format!("{AT}{want}");
        assert!(e.contains(&want), "{fields}\n  want: {want}\n  got:  {e}");
    }
    let e = error(&vs("  - route:\n    - destination: {host: reviews}\n      headers: {response: {remove: [':status']}}\n"));
    assert!(
        e.contains(&format!(
            "{AT}spec.http[0].route[0].headers.response.remove[0]: invalid header \":status\""
        )),
        "{e}"
    );
}

#[test]
fn action_warnings() {
    let cases: &[(&str, &str)] = &[
        ("  - redirect: {uri: /x}\n    timeout: 5s\n", "spec.http[0].timeout: has no effect on a redirect (nothing is forwarded); ignored"),
        ("  - directResponse: {status: 503}\n    retries: {attempts: 3}\n", "spec.http[0].retries: has no effect on a directResponse"),
        ("  - mirrorPercentage: {value: 10}\n    route: [{destination: {host: reviews}}]\n", "spec.http[0].mirrorPercentage: has no effect without mirror; ignored"),
        ("  - mirror: {host: ratings}\n    mirrorPercentage: {value: 0}\n    route: [{destination: {host: reviews}}]\n", "spec.http[0].mirror: percentage 0: nothing is mirrored; ignored"),
        ("  - delegate: {name: other}\n", "spec.http[0].delegate: delegation is not supported at a waypoint; route skipped"),
        ("  - route:\n    - destination: {host: reviews}\n      headers: {request: {set: {host: a, ':authority': b}}}\n", "spec.http[0].route[0].headers.request: authority is set more than once"),
    ];
    for (body, want) in cases {
        let s = load(&vs(body));
        let want = format!("{AT}{want}");
        assert!(
            s.warnings().iter().any(|w| w.contains(&want)),
            "want: {want}\n  got: {:#?}",
            s.warnings()
        );
    }
    // delegate together with a route is an error (istiod: root routes)
    let e = error(&vs(
        "  - delegate: {name: other}\n    route: [{destination: {host: reviews}}]\n",
    ));
    assert!(
        e.contains(&format!(
            "{AT}spec.http[0]: a route with delegate must not specify route"
        )),
        "{e}"
    );
}
