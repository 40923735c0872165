"""Config validation: every bad config names the file, the field and the fix; check-config exits 2."""

import subprocess
import sys

import pytest

from exporter.config import ConfigError, load_config, parse_config
from tests.support import ROOT

BAD_CONFIGS = [
    # (yaml text, expected fragment of the one-line error)
    ("targets:\n  - {name: a, url: 'ftp://x'}\n", "targets[0].url: not a URL"),
    ("targets:\n  - {name: a, url: 'http://x'}\n  - {name: b, url: 'nope'}\n", "targets[1].url: not a URL"),
    ("targets:\n  - {name: a, url: 'http://x', api: v3}\n", "targets[0].api: expected one of 'auto', 'v1' or 'v2'"),
    ("targets:\n  - {name: a, url: 'http://x', colour: red}\n", "targets[0].colour: unknown key"),
    ("targets:\n  - {url: 'http://x'}\n", "targets[0].name: required but missing"),
    ("targets:\n  - {name: a, url: 'http://x'}\n  - {name: a, url: 'http://y'}\n", "targets: target name 'a' is used twice"),
    ("targets:\n  - {name: 'has space', url: 'http://x'}\n", "targets[0].name: expected a short name"),
    ("targets:\n  - {name: a, url: 'http://x', probes: [batch, dance]}\n", "targets[0].probes: unknown probe 'dance'"),
    ("targets:\n  - {name: a, url: 'http://x/?key=1'}\n", "targets[0].url: expected a base URL without query string"),
    ("targets:\n  - {name: a, url: 'http://user:s3cret@x:8000'}\n", "targets[0].url: credentials in the URL are refused: put them under basic_auth"),
    ("targets:\n  - {name: a, url: 'https://user@x'}\n", "targets[0].url: credentials in the URL are refused"),
    ("schedules:\n  health: {interval: 10 parsecs, timeout: 5s}\n", "schedules.health.interval: expected a duration like 30s"),
    ("schedules:\n  health: {interval: 5s, timeout: 10s}\n", "schedules.health: timeout (10s) must not exceed interval (5s)"),
    ("schedules:\n  batch: {interval: -5s, timeout: 1s}\n", "schedules.batch.interval: expected a duration like 30s"),
    ("thresholds: {cpu_usage_percent: 180}\n", "thresholds.cpu_usage_percent: Input should be less than or equal to 100"),
    ("thresholds: {cpu_usage_percent: 90, cpu_usage_critical_percent: 85}\n", "cpu_usage_critical_percent (85) is below cpu_usage_percent (90)"),
    ("thresholds: {response_time_seconds: fast}\n", "thresholds.response_time_seconds: Input should be a valid number"),
    ("exporter: {listen: 'localhost'}\n", "exporter.listen: expected HOST:PORT"),
    ("exporter: {log_format: xml}\n", "exporter.log_format: expected one of 'json' or 'console'"),
    ("exporter: {allowed_targets: ['http://(']}\n", "exporter.allowed_targets: 'http://(' is not a valid regular expression"),
    ("exporter: {web: {basic_auth_users: {admin: hunter2}}}\n", "expected a bcrypt hash"),
    ("probes:\n  stream: {frame_ms: 1000}\n", "probes.stream.frame_ms: Input should be less than or equal to 600"),
    ("probes:\n  batch: {clip: missing}\n", "probes.batch.clip: unknown clip 'missing'"),
    ("probes:\n  stream: {allow_model_load: true}\n",
     "probes.stream.allow_model_load: allowed only under probes.batch and probes.punctuation"),
    ("probes:\n  timestamp: {allow_model_load: false}\n",
     "probes.timestamp.allow_model_load: allowed only under probes.batch and probes.punctuation"),
    ("probes:\n  vad: {allow_model_load: true}\n", "remove the key"),
    ("clips:\n  mine: {path: /nonexistent/clip.wav, transcript: hi}\n", "clips.mine.path: no such file"),
    ("targets:\n  - {name: a, url: 'http://x', bearer_token: t, basic_auth: {username: u, password: p}}\n",
     "targets[0]: bearer_token and basic_auth both set"),
    ("targets:\n  - {name: a, url: 'http://x', bearer_token: t, bearer_token_file: /run/token}\n",
     "targets[0]: bearer_token and bearer_token_file both set"),
    ("targets:\n  - {name: a, url: 'http://x', basic_auth: {username: u, password: p, password_file: /f}}\n",
     "targets[0].basic_auth: set exactly one of password and password_file"),
    ("targets:\n  - {name: a, url: 'http://x', basic_auth: {username: u}}\n",
     "targets[0].basic_auth: set exactly one of password and password_file"),
    ("targets:\n  - {name: a, url: 'https://x', tls_config: {ca_file: /nonexistent/ca.pem}}\n",
     "targets[0].tls_config.ca_file: no such file '/nonexistent/ca.pem'"),
    ("targets:\n  - {name: a, url: 'https://x', tls_config: {cert_file: /c.pem}}\n",
     "targets[0].tls_config: cert_file and key_file must be set together"),
    ("targets:\n  - {name: a, url: 'https://x', tls_config: {verify: false}}\n",
     "targets[0].tls_config.verify: unknown key"),
    ("targets:\n  - {name: a, url: 'https://x', tls_config: {server_name: 'a b'}}\n",
     "targets[0].tls_config: server_name: expected a host name"),
    ("targets:\n  - {name: a, url: 'http://x', tls_config: {insecure_skip_verify: true}}\n",
     "targets[0]: tls_config is set but the url is not https://"),
    ("targets:\n  - {name: a, url: 'http://x', proxy_url: 'https://proxy:3128'}\n",
     "targets[0].proxy_url: expected an HTTP proxy URL"),
    ("targets:\n  - {name: a, url: 'http://x', proxy_url: 'http://proxy:3128/path'}\n",
     "targets[0].proxy_url: expected http://[USER:PASSWORD@]HOST:PORT without a path"),
    ("tragets: []\n", "tragets: unknown key"),
    ("- just\n- a list\n", "(top level): expected a mapping"),
    ("targets: [\n", "not valid YAML"),
]


@pytest.mark.parametrize("text,expected", BAD_CONFIGS, ids=[e for _, e in BAD_CONFIGS])
def test_bad_config_names_field_and_fix(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert expected in message, message
    assert len(message.splitlines()) == 1, message  # one problem, one line


def test_check_config_exits_2_with_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("targets:\n  - {name: a, url: 'http://x'}\n  - {name: b, url: 'nope'}\n")
    proc = subprocess.run([sys.executable, "-m", "exporter", "check-config", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"{path}: targets[1].url: not a URL: expected http(s)://HOST[:PORT][/PREFIX], got 'nope'"


def test_serve_refuses_invalid_config(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("exporter: {listen: '127.0.0.1:1'}\nschedules: {stream: {interval: 1s}}\n")
    proc = subprocess.run([sys.executable, "-m", "exporter", "serve", "--config", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert "schedules.stream.timeout: required but missing" in proc.stderr
    assert "refusing to start" in proc.stderr


def test_example_config_is_valid_and_typed():
    config = load_config(ROOT / "config.example.yaml")
    assert [t.name for t in config.targets] == ["asr-v1", "asr-v2"]
    assert config.schedules.health.interval == 60.0 and config.schedules.health.timeout == 15.0
    assert config.thresholds.cpu_usage_percent == 80 and config.thresholds.error_rate_percent == 10
    assert config.thresholds.stale_after == 600.0
    assert config.targets[0].enabled_probes() == ("batch", "stream", "punctuation", "vad")  # timestamp: opt-in


def test_durations_and_defaults():
    config = parse_config({"schedules": {"batch": {"interval": "2m", "timeout": "1500ms"}}})
    assert config.schedules.batch.interval == 120.0
    assert config.schedules.batch.timeout == 1.5
    assert config.exporter.listen == "0.0.0.0:9877"
    assert config.targets == ()


def test_clip_paths_resolve_against_the_config_file(tmp_path):
    clip = tmp_path / "clips" / "hello.wav"
    clip.parent.mkdir()
    clip.write_bytes((ROOT / "exporter/data/default.wav").read_bytes())
    path = tmp_path / "config.yaml"
    path.write_text("clips:\n  hello: {path: clips/hello.wav, transcript: 你好}\nprobes:\n  batch: {clip: hello}\n")
    config = load_config(path)
    assert config.clips["hello"].path == str(clip)


def test_a_password_in_a_target_url_is_refused_without_being_repeated(tmp_path):
    path = tmp_path / "secret.yaml"
    path.write_text("targets:\n  - {name: a, url: 'http://probe:s3cret@127.0.0.1:8000'}\n")
    proc = subprocess.run([sys.executable, "-m", "exporter", "check-config", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert "targets[0].url: credentials in the URL are refused: put them under basic_auth" in proc.stderr
    assert "s3cret" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("field,content,expected", [
    ("ca_file", b"not a certificate\n", "holds no PEM CA certificate"),
    ("cert_file", b"not a certificate\n", "are not a PEM certificate and its private key"),
])
def test_unusable_tls_files_exit_2_naming_the_field(tmp_path, field, content, expected):
    (tmp_path / "bad.pem").write_bytes(content)
    tls = {"ca_file": "bad.pem"} if field == "ca_file" else {"cert_file": "bad.pem", "key_file": "bad.pem"}
    path = tmp_path / "config.yaml"
    path.write_text(f"targets:\n  - {{name: a, url: 'https://x', tls_config: {tls}}}\n")
    proc = subprocess.run([sys.executable, "-m", "exporter", "check-config", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"{path}: targets[0].tls_config.{field}: '{tmp_path / 'bad.pem'}' "), proc.stderr
    assert expected in proc.stderr, proc.stderr


def test_check_config_states_the_timestamp_probes_daily_cost(tmp_path):
    """Exit 0, and one warning line per target that lists timestamp, with files and bytes a day at the
    configured interval and clip size (the built-in short clip, or the configured one)."""
    from exporter.clips import builtin_clip_bytes

    path = tmp_path / "ts.yaml"
    path.write_text("targets:\n  - {name: a, url: 'http://127.0.0.1:1', probes: [batch, timestamp]}\n"
                    "  - {name: b, url: 'http://127.0.0.1:2'}\n"
                    "schedules:\n  timestamp: {interval: 10m, timeout: 30s}\n")
    proc = subprocess.run([sys.executable, "-m", "exporter", "check-config", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stdout.splitlines() if "warning" in line]
    size = builtin_clip_bytes("short")
    assert len(warnings) == 1 and "targets[0] (a) runs the timestamp probe" in warnings[0]
    assert f"144 files, {144 * size / 1e6:.1f} MB a day" in warnings[0], warnings[0]
    assert f"clip 'short' of {size / 1000:.0f} kB" in warnings[0]


def test_timestamp_is_not_a_default_probe():
    config = parse_config({"targets": [{"name": "a", "url": "http://127.0.0.1:1"}]})
    assert "timestamp" not in config.targets[0].enabled_probes()
    assert config.probes.timestamp.clip == "short"


def test_basic_auth_users_file(tmp_path):
    hashed = "$2b$10$" + "a" * 53
    (tmp_path / "users").write_text(f"# htpasswd -nB\nprometheus:{hashed}\n\ngrafana:{hashed}\n")
    path = tmp_path / "config.yaml"
    path.write_text("exporter: {web: {basic_auth_users_file: users}}\n")
    web = load_config(path).exporter.web
    assert web.basic_auth_users == {"prometheus": hashed, "grafana": hashed}
    assert web.basic_auth_users_file == str(tmp_path / "users")
    for content, expected in ((f"prometheus:hunter2\n", "line 1: expected USER:BCRYPT-HASH"),
                              (f"a:{hashed}\na:{hashed}\n", "line 2: user 'a' is listed twice"),
                              ("# nobody\n", "lists no user")):
        (tmp_path / "users").write_text(content)
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert str(info.value).startswith(f"{path}: exporter.web.basic_auth_users_file: "), info.value
        assert expected in str(info.value) and "hunter2" not in str(info.value)
    path.write_text("exporter: {web: {basic_auth_users_file: nope}}\n")
    with pytest.raises(ConfigError, match="basic_auth_users_file: no such file"):
        load_config(path)
    path.write_text(f"exporter: {{web: {{basic_auth_users_file: users, basic_auth_users: {{a: '{hashed}'}}}}}}\n")
    with pytest.raises(ConfigError, match="basic_auth_users and basic_auth_users_file both set"):
        load_config(path)
