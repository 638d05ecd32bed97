import io
import subprocess

import pytest

from tasks.inventory import Host
from tasks.ops.remote import HostError
from tasks.serving.predict import PredictError, Request, credentials_of, on_host_script, parse_on_host, read_request, upstream_host


def test_a_json_file_a_csv_file_and_stdin(tmp_path):
    (tmp_path / "rows.json").write_text('{"inputs": [[1, 2]]}')
    (tmp_path / "rows.csv").write_text("a,b\n1,2\n")
    assert read_request(str(tmp_path / "rows.json"), None) == Request('{"inputs": [[1, 2]]}')
    assert read_request(str(tmp_path / "rows.csv"), None) == Request("a,b\n1,2\n", "text/csv")
    assert read_request("-", io.StringIO('{"instances": []}')) == Request('{"instances": []}')
    assert read_request("", None) == Request("")


def test_bad_input_is_refused_before_anything_is_sent(tmp_path):
    (tmp_path / "bad.json").write_text("columns: a")
    with pytest.raises(PredictError, match="not JSON"):
        read_request(str(tmp_path / "bad.json"), None)
    with pytest.raises(PredictError, match="No such file"):
        read_request(str(tmp_path / "missing.json"), None)


def test_the_answer_carries_the_release_the_status_and_the_body():
    answer = parse_on_host("m1", '@@release 20261129T101010Z-abcd1234\n{"predictions": [5.6]}\n200')
    assert (answer.host, answer.release, answer.status, answer.body) == ("m1", "20261129T101010Z-abcd1234", 200, '{"predictions": [5.6]}')
    with pytest.raises(HostError, match="not deployed"):
        parse_on_host("m1", "model wine is not deployed on this host: fab deploy-model --name wine\n")


@pytest.mark.parametrize("body", ["", '{"inputs": [1]}'])
def test_the_on_host_script_is_valid_bash(body):
    script = on_host_script("wine", 5001, Request(body))
    assert subprocess.run(["bash", "-n", "-c", script]).returncode == 0
    assert ("--data-binary @-" in script) == bool(body)
    assert "http://127.0.0.1:5001/invocations" in script


def test_the_upstream_header_names_an_inventory_host():
    hosts = [Host(name="m1", address="10.0.0.1"), Host(name="m2", address="10.0.0.2")]
    assert upstream_host("10.0.0.2:5001", hosts).name == "m2"
    assert upstream_host("10.0.0.1:5001, 10.0.0.2:5001", hosts).name == "m2"
    assert upstream_host("", hosts) is None


def test_credentials_come_from_the_model_user_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(PredictError, match="found: none"):
        credentials_of("")
    users = tmp_path / ".mlflow" / "model-users"
    users.mkdir(parents=True)
    (users / "alice.curl").write_text('user = "alice:s3:cret"\n')
    assert credentials_of("") == ("alice", "s3:cret")
    (users / "bob.curl").write_text('user = "bob:pw"\n')
    with pytest.raises(PredictError, match="found: alice, bob"):
        credentials_of("")
    assert credentials_of("bob") == ("bob", "pw")
    with pytest.raises(PredictError, match="carol"):
        credentials_of("carol")
    with pytest.raises(PredictError, match="letters, digits"):
        credentials_of("../../.ssh/id_ed25519")
