"""``psframe-deploy``: a psframe cluster on EC2 from one CloudFormation stack.

``up``/``status``/``down`` manage the stack from your machine, ``run`` runs ``psframe-launch`` on
the head node over ssh, ``bootstrap`` runs on every node at boot (discovery by tag, hostfile,
cluster ssh key through SSM Parameter Store, the stack signal), ``bake`` builds the AMI with
Packer. The templates live in the repository's ``deploy/`` folder.
"""
