{
 "key": "8c406635d5fd3ff6",
 "signature": "5VpN3YRVjEqz44LShp4mImDXqxLxv61v+xISchmetafoPdHGDmYFP1FPUvxwHUxSHp4RQviL6eQLo3UcPhNSAA=="
}
