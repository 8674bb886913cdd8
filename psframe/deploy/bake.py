"""``psframe-deploy bake``: build the psframe AMI with Packer (``deploy/ami``) and print its id
for ``psframe-deploy up --image-id``."""
import json
import os
import shutil
import subprocess
import tempfile

from .aws import DeployError
from .stack import TEMPLATES

AMI_TEMPLATE = os.path.join(TEMPLATES, "psframe-ami.pkr.hcl")


def packer_vars(ns, manifest):
    pairs = {"manifest": manifest, "psframe_source": ns.psframe_source,
             "instance_type": ns.instance_type, "region": ns.region or os.environ.get(
                 "AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")}
    out = []
    for key, value in pairs.items():
        if value:
            out += ["-var", f"{key}={value}"]
    return out


def bake(ns, out=print):
    packer = shutil.which("packer")
    if packer is None:
        raise DeployError("packer is not installed: apt-get install packer (Debian) or see "
                          "https://developer.hashicorp.com/packer/install")
    if not os.path.exists(ns.template):
        raise DeployError(f"no Packer template at {ns.template!r}; pass --template "
                          f"deploy/ami/psframe-ami.pkr.hcl")
    env = dict(os.environ, CHECKPOINT_DISABLE="1")   # no version check call home
    with tempfile.TemporaryDirectory(prefix="psframe-bake-") as tmp:
        manifest = os.path.join(tmp, "manifest.json")
        args = packer_vars(ns, manifest)
        check = subprocess.run([packer, "validate", *args, ns.template], env=env, timeout=120)
        if check.returncode:
            raise DeployError(f"packer validate {ns.template} failed (exit {check.returncode})")
        out(f"packer validate {ns.template}: ok")
        if ns.validate_only:
            return 0
        build = subprocess.run([packer, "build", *args, ns.template], env=env)
        if build.returncode:
            raise DeployError(f"packer build failed (exit {build.returncode}); its output above "
                              f"names the step")
        with open(manifest) as f:
            artifact = json.load(f)["builds"][-1]["artifact_id"]     # "region:ami-..."
    region, _, ami = artifact.partition(":")
    out(f"AMI {ami} in {region}; use it with: psframe-deploy up --image-id {ami} ...")
    return 0
