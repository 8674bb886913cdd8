# The psframe AMI: the AWS Deep Learning Base AMI (Ubuntu 22.04) with psframe and its extras
# installed, so that nodes of a large cluster need not pip install at boot.
# Build: psframe-deploy bake (or: packer build deploy/ami/psframe-ami.pkr.hcl); then
# psframe-deploy up --image-id <the AMI id it prints>. Credentials come from the standard AWS
# environment (AWS_PROFILE, ...); nothing secret belongs in this file.

variable "region" {
  type        = string
  default     = "us-east-1"
  description = "Region to build the AMI in (where the stack will run)."
}

variable "instance_type" {
  type        = string
  default     = "g5.xlarge"
  description = "Build instance: a GPU type the Deep Learning AMI supports."
}

variable "psframe_source" {
  type        = string
  default     = "psframe[deploy,s3,examples,torch]==0.1.0"
  description = "pip requirement of psframe to install: a pinned version or a git+https URL with a ref."
}

variable "manifest" {
  type        = string
  default     = "packer-manifest.json"
  description = "Where packer writes the build manifest (psframe-deploy bake reads the AMI id from it)."
}

locals {
  stamp = formatdate("YYYYMMDD-hhmmss", timestamp())
}

source "amazon-ebs" "psframe" {
  region        = var.region
  instance_type = var.instance_type
  ami_name      = "psframe-dlami-${local.stamp}"
  ssh_username  = "ubuntu"

  source_ami_filter {
    filters = {
      name                  = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"
      architecture          = "x86_64"
      "virtualization-type" = "hvm"
      "root-device-type"    = "ebs"
    }
    owners      = ["amazon"]
    most_recent = true
  }

  tags = {
    Name             = "psframe-dlami-${local.stamp}"
    "psframe:source" = var.psframe_source
  }
}

build {
  sources = ["source.amazon-ebs.psframe"]

  provisioner "shell" {
    environment_vars = ["PSFRAME_SOURCE=${var.psframe_source}"]
    inline = [
      "set -eu",
      "sudo python3 -m pip install --quiet \"$PSFRAME_SOURCE\"",
      "psframe-deploy --help >/dev/null",
      "python3 -c 'import psframe, psframe_launcher; print(\"psframe\", psframe.__version__)'",
    ]
  }

  post-processor "manifest" {
    output     = var.manifest
    strip_path = true
  }
}
