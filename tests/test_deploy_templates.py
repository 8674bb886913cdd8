"""deploy/ templates with the real tools: cfn-lint on the CloudFormation template, packer validate
on the AMI template (also through psframe-deploy bake), bash -n and shellcheck on the UserData,
and no private key or AWS credential anywhere in deploy/ or the psframe-deploy package."""
import os
import re
import subprocess

from conftest import require, require_exe
from deploy_fixtures import (AMI_TEMPLATE, DEPLOY, DEPLOY_DIR, ROOT, TEMPLATE, VENV_BIN, deploy,
                             secrets_in, shell_checks, userdata_of_template)

CFN_LINT = os.path.join(VENV_BIN, "cfn-lint")
# what CloudFormation substitutes into the UserData, for the shell checks
SAMPLE = {"PsframeSource": "psframe[deploy,s3]==0.1.0", "AWS::StackName": "psf-demo",
          "AWS::Region": "us-east-1", "WorkerCount": "2", "ServerCount": "1", "WorkerSlots": "8"}


def _lint(path):
    require(os.path.exists(CFN_LINT), "cfn-lint in the venv (pip install cfn-lint)")
    return subprocess.run([CFN_LINT, path], capture_output=True, text=True, timeout=120)


def test_cfn_lint_passes_on_every_template():
    templates = [os.path.join(d, f) for d, _, fs in os.walk(DEPLOY_DIR) for f in fs
                 if f.endswith((".yaml", ".yml", ".json")) and "cloudformation" in d]
    assert TEMPLATE in templates
    for path in templates:
        result = _lint(path)
        assert result.returncode == 0, result.stdout + result.stderr


def test_cfn_lint_catches_a_broken_copy(tmp_path):
    """The lint is real: a security group ingress on a port range the wrong way round and a
    reference to a missing resource fail it."""
    with open(TEMPLATE) as f:
        text = f.read()
    broken = text.replace("GroupId: !GetAtt ClusterSecurityGroup.GroupId\n      IpProtocol: tcp\n"
                          "      FromPort: 1024", "GroupId: !GetAtt NoSuchGroup.GroupId\n"
                          "      IpProtocol: tcp\n      FromPort: 1024", 1)
    assert broken != text
    (tmp_path / "broken.yaml").write_text(broken)
    result = _lint(str(tmp_path / "broken.yaml"))
    assert result.returncode & 2, result.stdout            # bit 2: errors
    assert "NoSuchGroup" in result.stdout


def _packer():
    return require_exe("packer")


def _validate(path, *extra):
    env = dict(os.environ, CHECKPOINT_DISABLE="1")
    return subprocess.run([_packer(), "validate", *extra, path], capture_output=True, text=True,
                          timeout=120, env=env, cwd=os.path.dirname(path))


def test_packer_validate_passes_offline():
    """Debian's packer 1.6 has the amazon-ebs builder built in, so the full validate (not
    -syntax-only) runs here without downloading a plugin or calling AWS."""
    result = _validate(AMI_TEMPLATE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_packer_validate_catches_a_broken_copy(tmp_path):
    with open(AMI_TEMPLATE) as f:
        text = f.read()
    broken = re.sub(r'\n\s*ssh_username\s*=\s*"ubuntu"', "", text)
    assert broken != text
    (tmp_path / "broken.pkr.hcl").write_text(broken)
    result = _validate(str(tmp_path / "broken.pkr.hcl"))
    assert result.returncode != 0
    assert "ssh_username" in result.stdout + result.stderr


def test_bake_validate_only_runs_packer_on_the_packaged_template(tmp_path):
    _packer()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    result = deploy(["bake", "--validate-only", "--region", "eu-west-1",
                     "--psframe-source", "psframe==0.1.0"], env=dict(env, HOME=str(tmp_path)),
                    timeout=120)
    assert result.returncode == 0, result.stdout
    assert re.search(r"packer validate \S+psframe-ami\.pkr\.hcl: ok", result.stdout), result.stdout


def test_bake_without_packer_says_how_to_install_it(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))        # nothing on PATH: no packer
    result = subprocess.run([DEPLOY, "bake"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "packer is not installed: apt-get install packer" in result.stderr


def _render(script):
    out = script
    for name, value in SAMPLE.items():
        out = out.replace("${" + name + "}", value)
    assert "${" not in out, out                       # every substitution is one we know
    return out


def test_userdata_is_short_passes_bash_n_and_shellcheck(tmp_path):
    require_exe("shellcheck")
    scripts = userdata_of_template()
    assert set(scripts) == {"WorkerLaunchTemplate", "ServerLaunchTemplate"}
    assert len(set(scripts.values())) == 1               # one script: the role comes from tags
    script = _render(next(iter(scripts.values())))
    assert len(script.splitlines()) <= 8
    assert "psframe-deploy bootstrap --stack \"psf-demo\"" in script
    syntax, check = shell_checks(script, tmp_path)
    assert syntax.returncode == 0, syntax.stderr
    assert check.returncode == 0, check.stdout


def test_shellcheck_is_real(tmp_path):
    require_exe("shellcheck")
    _, check = shell_checks("#!/bin/bash\npsframe-deploy bootstrap --stack $1\n", tmp_path)
    assert check.returncode != 0 and "SC2086" in check.stdout


def test_no_private_key_or_credential_in_deploy_files():
    paths = [os.path.join(d, f) for top in (DEPLOY_DIR, os.path.join(ROOT, "psframe", "deploy"))
             for d, _, fs in os.walk(top) for f in fs if "__pycache__" not in d]
    assert len(paths) >= 8
    found = {}
    for path in paths:
        with open(path, errors="replace") as f:
            text = f.read()
        hits = secrets_in(text)
        if hits:
            found[path] = hits
    assert not found, found
    assert secrets_in("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n")   # the scan can fail
    assert secrets_in("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    assert secrets_in("AKIAIOSFODNN7EXAMPLE")


def test_readme_commands_parse_with_the_cli():
    """Every psframe-deploy command line in deploy/README.md is one the CLI accepts."""
    import shlex

    from psframe.deploy.cli import build_parser
    with open(os.path.join(DEPLOY_DIR, "README.md")) as f:
        text = f.read()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    commands = []
    for block in blocks:
        for cmd in block.replace("\\\n", " ").splitlines():
            if cmd.startswith("psframe-deploy "):
                commands.append(re.sub(r"\"\$\(.*?\)/32\"", "203.0.113.7/32", cmd))
    assert len(commands) >= 6, commands
    verbs = set()
    for cmd in commands:
        ns = build_parser().parse_args(shlex.split(cmd)[1:])
        verbs.add(ns.command)
    assert {"up", "run", "down", "bake"} <= verbs
