{
 "key": "0551c8948f5b38e6",
 "signature": "gXxWpGVTm5fNW88dgVnv5x4YxMwEuV/KynCSpCUkMxE4poOWvZYhy8ssFjLAMuLFMdtL9P0BWVYLS7cP9n8qAA=="
}
