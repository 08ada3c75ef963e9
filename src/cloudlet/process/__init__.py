"""Process VMs: throw-away VMs that run one program (cloudlet run)."""
