"""Shared by the deploy/ tests: the template (with its one moto adjustment), running
``psframe-deploy`` with a deadline, the AWS environment for a moto endpoint, and the secret scan."""
import os
import re
import subprocess
import sys

from s3_fixtures import KEY, REGION, SECRET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY_DIR = os.path.join(ROOT, "deploy")
TEMPLATE = os.path.join(DEPLOY_DIR, "cloudformation", "psframe-cluster.yaml")
AMI_TEMPLATE = os.path.join(DEPLOY_DIR, "ami", "psframe-ami.pkr.hcl")
VENV_BIN = os.path.dirname(sys.executable)
DEPLOY = os.path.join(VENV_BIN, "psframe-deploy")
DLAMI_PARAMETER = ("/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/"
                   "latest/ami-id")
MOTO_AMI_PARAMETER = "/aws/service/ami-amazon-linux-latest/amzn2-ami-hvm-x86_64-gp2"

# what must never appear in a template, UserData, an argv or a log
SECRET_PATTERNS = [re.compile(p) for p in (
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----", r"PRIVATE KEY", r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",
    r"(?i)aws_secret_access_key\s*[=:]", r"(?i)secret_?access_?key\s*[=:]\s*['\"]?[A-Za-z0-9/+]{30,}",
    re.escape(SECRET))]


def secrets_in(text):
    """The secret-looking matches in ``text`` (empty when clean)."""
    return [m.group(0) for p in SECRET_PATTERNS for m in p.finditer(text)]


def moto_template(tmp_path):
    """The cluster template with one change for moto, written under ``tmp_path``: moto resolves
    the *default* of every SSM-typed parameter even when a value is passed, and its Parameter
    Store has no Deep Learning AMI parameter (names under /aws cannot be created), so the
    default becomes the Amazon Linux 2 parameter that moto ships."""
    with open(TEMPLATE) as f:
        text = f.read()
    assert text.count(DLAMI_PARAMETER) == 1
    path = os.path.join(str(tmp_path), "psframe-cluster-moto.yaml")
    with open(path, "w") as f:
        f.write(text.replace(DLAMI_PARAMETER, MOTO_AMI_PARAMETER))
    return path


def aws_env(endpoint, base=None):
    """The environment of a psframe-deploy process talking to the moto endpoint."""
    env = {k: v for k, v in (base or os.environ).items()
           if not k.startswith(("AWS_", "PSFRAME_"))}
    env.update(AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, AWS_REGION=REGION,
               AWS_ENDPOINT_URL=endpoint, PYTHONUNBUFFERED="1")
    return env


def deploy(args, env, prefix=(), timeout=120):
    """``psframe-deploy ARGS`` to completion (killed after ``timeout`` s); stdout+stderr as text."""
    return subprocess.run([*prefix, "timeout", "-s", "KILL", str(timeout), DEPLOY, *args],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout + 30)


def userdata_of_template():
    """The UserData script of each launch template, as written (before substitution)."""
    from cfnlint.decode import cfn_yaml
    resources = cfn_yaml.load(TEMPLATE)["Resources"]
    return {name: r["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Sub"]
            for name, r in resources.items() if r["Type"] == "AWS::EC2::LaunchTemplate"}


def shell_checks(script, tmp_path, name="userdata.sh"):
    """(bash -n, shellcheck) results of ``script`` as CompletedProcess objects."""
    path = os.path.join(str(tmp_path), name)
    with open(path, "w") as f:
        f.write(script)
    syntax = subprocess.run(["bash", "-n", path], capture_output=True, text=True, timeout=30)
    check = subprocess.run(["shellcheck", "-s", "bash", path], capture_output=True, text=True,
                           timeout=60)
    return syntax, check
