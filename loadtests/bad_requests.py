"""Request-level cases of the bad-input corpus: task ids in the path, routing, query parameters,
admin auth, and training requests.

Task ids are written into the path percent-encoded as a client would send them (`%2F` for '/'), and
some raw ('..'), because the server decodes the path before routing: an encoded separator makes the
route not match (404), anything else that is not a plain name is refused by the id check (400).
"""

from __future__ import annotations

import json
from urllib.parse import quote

from ..deploy.training.jobs import MAX_TRAIN_REQUEST_BYTES
from .corpus_case import Case, Limits

PNG, JSON = "image/png", "application/json"
INVALID_ID = "invalid task id"
NOT_FOUND = "Not Found"
NO_TOKEN = "missing or wrong admin token"
DROP = object()  # a field left out of a training request


def encoded(task_id: str) -> str:
    return quote(task_id, safe="")


# (name, path segment as sent, status for predict/GET/DELETE of a never-registered id, fragment)
TASK_IDS: tuple[tuple[str, str, int, str], ...] = (
    ("slash", encoded("a/b"), 404, NOT_FOUND),
    ("traversal-encoded", encoded("../../etc/passwd"), 404, NOT_FOUND),
    ("absolute-path", encoded("/etc/passwd"), 404, NOT_FOUND),
    ("dot-dot-encoded", "%2e%2e", 400, INVALID_ID),
    ("dot-dot-raw", "..", 400, INVALID_ID),
    ("dot", "%2E", 400, INVALID_ID),
    ("backslash", encoded("a\\b"), 400, INVALID_ID),
    ("windows-traversal", encoded("..\\..\\windows\\win.ini"), 400, INVALID_ID),
    ("drive-letter", encoded("C:\\tasks"), 400, INVALID_ID),
    ("dots-inside", "a..b", 400, INVALID_ID),
    ("nul", encoded("a\0b"), 400, INVALID_ID),
    ("nul-only", "%00", 400, INVALID_ID),
    ("newline", encoded("a\nb"), 400, INVALID_ID),
    ("crlf-header-injection", encoded("a\r\nX-Injected: 1"), 400, INVALID_ID),
    ("space", encoded("a b"), 400, INVALID_ID),
    ("tilde-home", encoded("~root"), 400, INVALID_ID),
    ("leading-dash", "-rf", 400, INVALID_ID),
    ("leading-dot", ".hidden", 400, INVALID_ID),
    ("leading-underscore", "_private", 400, INVALID_ID),
    ("question-mark", encoded("a?b"), 400, INVALID_ID),
    ("hash", encoded("a#b"), 400, INVALID_ID),
    ("percent", encoded("a%b"), 400, INVALID_ID),
    ("semicolon", "a;b", 400, INVALID_ID),
    ("star", "%2A", 400, INVALID_ID),
    ("colon", encoded("a:b"), 400, INVALID_ID),
    ("unicode-accents", encoded("\u00e9t\u00e9"), 400, INVALID_ID),
    ("unicode-cyrillic-homoglyph", encoded("\u0430bc"), 400, INVALID_ID),
    ("unicode-fullwidth", encoded("\uff21\uff22"), 400, INVALID_ID),
    ("unicode-zero-width-space", encoded("a\u200bb"), 400, INVALID_ID),
    ("unicode-right-to-left-override", encoded("\u202eevil"), 400, INVALID_ID),
    ("unicode-emoji", encoded("\U0001f600"), 400, INVALID_ID),
    ("unicode-combining-accent", encoded("abc\u0301"), 400, INVALID_ID),
    ("unicode-fullwidth-slash", encoded("a\uff0fb"), 400, INVALID_ID),
    ("invalid-utf8", "%FF%FE", 400, INVALID_ID),
    ("length-129", "a" * 129, 400, INVALID_ID),
    ("length-4000", "b" * 4000, 400, INVALID_ID),
    ("length-128-unknown", "c" * 128, 404, "is not registered"),
    ("trailing-dot-unknown", "trailing.", 404, "is not registered"),
)
# Ids that are valid names: a PUT with a valid file would register them, so they get no PUT case.
VALID_NAMES = {"length-128-unknown", "trailing-dot-unknown"}
PUT_DELETE_IDS = ("slash", "traversal-encoded", "dot-dot-encoded", "dot-dot-raw", "backslash", "nul", "newline",
                  "unicode-accents", "unicode-emoji", "invalid-utf8", "length-129", "leading-dot")


class RequestCases:
    def __init__(self, task: str, limits: Limits, image: bytes, adapter: bytes) -> None:
        self.task, self.limits, self.image, self.adapter = task, limits, image, adapter
        self.cases: list[Case] = []

    def add(self, name: str, category: str, method: str, path: str, status: int, fragment: str | None,
            body: bytes | None = None, content_type: str | None = None, **extra) -> None:
        self.cases.append(Case(name, category, method, path, status, fragment, body, content_type, **extra))

    def build(self) -> list[Case]:
        for part in (self.task_ids, self.routing, self.query, self.auth, self.training):
            part()
        return self.cases

    def task_ids(self) -> None:
        c = "task-id"
        by_name = {name: (segment, status, fragment) for name, segment, status, fragment in TASK_IDS}
        for name, (segment, status, fragment) in by_name.items():
            self.add(f"predict-id-{name}", c, "POST", f"/v1/tasks/{segment}/predict", status, fragment, self.image, PNG)
        for name in ("slash", "traversal-encoded", "dot-dot-raw", "backslash", "nul", "unicode-emoji", "length-4000",
                     "length-128-unknown"):
            segment, status, fragment = by_name[name]
            self.add(f"get-id-{name}", c, "GET", f"/v1/tasks/{segment}", status, fragment)
        for name in PUT_DELETE_IDS:
            segment, status, fragment = by_name[name]
            assert name not in VALID_NAMES
            self.add(f"put-id-{name}", c, "PUT", f"/v1/tasks/{segment}", status, fragment, self.adapter,
                     "application/octet-stream", admin_token=True, note="a valid adapter file under a bad id")
            self.add(f"delete-id-{name}", c, "DELETE", f"/v1/tasks/{segment}", status, fragment, admin_token=True)
        for method, body in (("PUT", self.adapter), ("DELETE", None)):
            self.add(f"{method.lower()}-reserved-backbone-id", c, method, "/v1/tasks/__backbone__", 400, INVALID_ID,
                     body, "application/octet-stream" if body else None, admin_token=True,
                     note="the bare backbone's id is reserved")
        self.add("delete-unknown-valid-id", c, "DELETE", "/v1/tasks/never-registered", 404, "is not registered",
                 admin_token=True)

    def routing(self) -> None:
        c, task = "routing", self.task
        for name, method, path, status, fragment in (
            ("predict-with-get", "GET", f"/v1/tasks/{task}/predict", 405, "Method Not Allowed"),
            ("patch-task", "PATCH", f"/v1/tasks/{task}", 405, "Method Not Allowed"),
            ("delete-task-list", "DELETE", "/v1/tasks", 405, "Method Not Allowed"),
            ("unknown-route", "POST", "/v1/nope", 404, NOT_FOUND),
            ("unknown-version", "GET", "/v2/tasks", 404, NOT_FOUND),
            ("predict-extra-segment", "POST", f"/v1/tasks/{task}/predict/extra", 404, NOT_FOUND),
            ("deep-path", "GET", "/v1/tasks/a/b/c/d", 404, NOT_FOUND),
            ("train-job-traversal", "GET", f"/v1/train/{encoded('../../etc/passwd')}", 404, NOT_FOUND),
        ):
            self.add(name, c, method, path, status, fragment, self.image if method == "POST" else None,
                     PNG if method == "POST" else None, admin_token=name.startswith("train"))

    def query(self) -> None:
        c, path = "query-parameter", f"/v1/tasks/{self.task}/predict"
        for value in ("0", "-1", "1001", "1" + "0" * 30):
            self.add(f"top-k-{value[:8]}", c, "POST", f"{path}?top_k={value}", 400, "top_k must be between 1 and 1000",
                     self.image, PNG)
        for name, value in (("word", "abc"), ("fraction", "1.5"), ("empty", ""), ("nul", "%00"), ("hex", "0x10")):
            self.add(f"top-k-{name}", c, "POST", f"{path}?top_k={value}", 400, "invalid request: query top_k",
                     self.image, PNG)
        self.add("top-k-above-class-count", c, "POST", f"{path}?top_k=1000", 200, None, self.image, PNG,
                 note="answers every class there is")
        self.add("unknown-parameter-ignored", c, "POST", f"{path}?debug=1&x=%00", 200, None, self.image, PNG)

    def auth(self) -> None:
        c, task = "auth", self.task
        train = json.dumps({"task_id": "auth-probe", "dataset": "digits", "epochs": 1, "train_size": 8,
                            "test_size": 4}).encode()
        wrong = {"none": {}, "wrong-token": {"Authorization": "Bearer wrong-token"},
                 "basic-scheme": {"Authorization": "Basic dGVzdC1hZG1pbi10b2tlbg=="},
                 "scheme-only": {"Authorization": "Bearer"},
                 "token-without-scheme": {"Authorization": "test-admin-token"},
                 "non-ascii": {"Authorization": "Bearer t\u00e9st"}}
        for name, headers in wrong.items():
            self.add(f"put-{name}", c, "PUT", f"/v1/tasks/{task}", 401, NO_TOKEN, self.adapter,
                     "application/octet-stream", headers=headers, note="a valid file: only the token is wrong")
        for name in ("none", "wrong-token"):
            self.add(f"delete-{name}", c, "DELETE", f"/v1/tasks/{task}", 401, NO_TOKEN, headers=wrong[name])
            self.add(f"train-{name}", c, "POST", "/v1/train", 401, NO_TOKEN, train, JSON, headers=wrong[name])
            self.add(f"train-status-{name}", c, "GET", "/v1/train/some-job", 401, NO_TOKEN, headers=wrong[name])
            self.add(f"train-cancel-{name}", c, "DELETE", "/v1/train/some-job", 401, NO_TOKEN, headers=wrong[name])
        self.add("put-token-in-query", c, "PUT", f"/v1/tasks/{task}?token=test-admin-token", 401, NO_TOKEN,
                 self.adapter, "application/octet-stream")

    def training(self) -> None:
        c = "train-request"

        def train(name: str, status: int, fragment: str, body: bytes, **extra) -> None:
            self.add(f"train-{name}", c, "POST", "/v1/train", status, fragment, body, JSON, admin_token=True, **extra)

        def doc(**fields) -> bytes:
            base = {"task_id": "corpus-train", "dataset": "digits", "epochs": 1, "train_size": 8, "test_size": 4}
            return json.dumps({k: v for k, v in {**base, **fields}.items() if v is not DROP}).encode()

        train("malformed-json", 400, "malformed JSON body", b'{"task_id": "x",')
        train("deep-nesting", 400, "malformed JSON body", b"[", body_repeat=60_000)
        train("empty-body", 400, "must be a JSON object", b"")
        train("array", 400, "must be a JSON object", b'["task_id", "dataset"]')
        train("missing-dataset", 400, "needs task_id and dataset", doc(dataset=DROP))
        train("unknown-field", 400, "unknown: ['gpu']", doc(gpu=True))
        for name, value in (("traversal", "../x"), ("number", 5), ("reserved", "__backbone__"),
                            ("unicode", "\u00e9t\u00e9")):
            train(f"task-id-{name}", 400, INVALID_ID, doc(task_id=value))
        for name, value in (("unknown", "sgd"), ("list", ["mosa"])):
            train(f"method-{name}", 400, "method must be one of", doc(method=value))
        for name, value in (("zero", 0), ("too-many", 1001), ("fraction", 1.5), ("bool", True), ("string", "10")):
            train(f"epochs-{name}", 400, "epochs must be an integer from 1 to 1000", doc(epochs=value))
        train("train-size-one", 400, "train_size must be an integer from 2", doc(train_size=1))
        train("seed-negative", 400, "seed must be an integer from 0", doc(seed=-1))
        for name, value in (("nan", float("nan")), ("infinity", float("inf")), ("zero", 0), ("string", "0.1")):
            train(f"lr-{name}", 400, "lr must be a number in (0, 1]", doc(lr=value))
        inside = "must be relative to datasets_root and stay inside it"
        for name, value in (("parent", "folder:../outside"), ("absolute", "folder:/etc"),
                            ("list-traversal", "list:../../etc/passwd"), ("dot-dot-inside", "folder:a/../../x")):
            train(f"dataset-{name}", 400, inside, doc(dataset=value))
        for name, value in (("bare-path", "/etc/passwd"), ("url", "http://example.invalid/data"),
                            ("empty-folder", "folder:")):
            train(f"dataset-{name}", 400, "dataset must be one of", doc(dataset=value))
        train("dataset-number", 400, "dataset must be a string", doc(dataset=7))
        train("dataset-nul-byte", 400, "dataset path must not contain a NUL byte", doc(dataset="folder:a\0b"))
        train("over-limit", 413, f"the limit is {MAX_TRAIN_REQUEST_BYTES}", doc(), pad_to=MAX_TRAIN_REQUEST_BYTES + 1)
        for method, name in (("GET", "status"), ("DELETE", "cancel")):
            for job, segment in (("unknown", "no-such-job"), ("dot-dot", "%2e%2e"), ("nul", "%00")):
                self.add(f"train-{name}-{job}", c, method, f"/v1/train/{segment}", 404, "no training job",
                         admin_token=True, note="a job id is a key in a table, never a path")
